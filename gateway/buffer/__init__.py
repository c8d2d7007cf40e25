"""Durable store-and-forward: a reading leaves the buffer only after a sink confirmed it."""

from gateway.buffer.base import Batch, Buffer, BufferLimits
from gateway.buffer.memory import MemoryBuffer
from gateway.buffer.sqlite import SqliteBuffer
from gateway.buffer.worker import BufferWorker

__all__ = ["Batch", "Buffer", "BufferLimits", "BufferWorker", "MemoryBuffer", "SqliteBuffer"]
