"""Byte-level device simulators: Modbus over sockets, Sensirion and Plantower chips on an I2C bus.

They import nothing from `gateway/` except the shared model, so they can run in their own process
(`python -m simulators --config FILE`) while a gateway is killed and restarted against them.
"""
