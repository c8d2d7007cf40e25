"""Durable store-and-forward: a reading leaves the buffer only after a sink confirmed it."""

from gateway.buffer.base import Batch, Buffer
from gateway.buffer.memory import MemoryBuffer
from gateway.buffer.sqlite import SqliteBuffer
from gateway.buffer.worker import BufferWorker

__all__ = ["Batch", "Buffer", "BufferWorker", "MemoryBuffer", "SqliteBuffer"]
