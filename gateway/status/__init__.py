"""What children and staff see: air-quality classes, alarms, the LED traffic light, the e-ink panel.

`gateway.status.airquality` and `gateway.status.alarms` are pure (no I/O, clocks injected);
`gateway.status.led` and `gateway.status.eink` drive the outputs; `gateway.status.service` ties
them to the readings and to MQTT. Nothing here is imported at start-up unless ``[status]`` is used.
"""
