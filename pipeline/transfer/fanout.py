"""Fanout: one producer feeds N consumers, each through a small bounded memory stream.

The producer's ``send`` waits until every attached consumer has room, so the slowest consumer sets the
pace and memory stays at ``depth`` chunks per consumer (chunks are shared ``bytes`` objects, never
copied). A consumer that closes its end, or that takes no chunk for ``stall_timeout`` seconds, is
detached with a reason; the others continue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Fanout", "FanoutStatistics"]


class FanoutStatistics(NamedTuple):
    chunks: int
    bytes: int
    attached: int
    detached: int


@dataclass
class _Consumer:
    name: str
    send: MemoryObjectSendStream[bytes]
    on_detach: list[str] = field(default_factory=list)


class Fanout:
    """Broadcast chunks to named consumers; detach the ones that fail or stall."""

    def __init__(
        self, depth: int, *, stall_timeout: float = math.inf, on_stall: Callable[[str], None] | None = None
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")  # never unbounded: backpressure needs a bound
        self.depth = depth
        self.stall_timeout = stall_timeout
        #: Told the name of a consumer detached for stalling, so its owner can cancel what it was doing.
        self.on_stall = on_stall
        self._consumers: dict[str, _Consumer] = {}
        self.detached: dict[str, str] = {}
        self._chunks = 0
        self._bytes = 0

    def add(self, name: str) -> MemoryObjectReceiveStream[bytes]:
        """Attach a consumer; it reads chunks from the returned stream until EOF."""
        send, receive = anyio.create_memory_object_stream[bytes](self.depth)
        self._consumers[name] = _Consumer(name, send)
        return receive

    @property
    def attached(self) -> list[str]:
        return list(self._consumers)

    def detach(self, name: str, reason: str) -> None:
        """Stop feeding ``name``; its reader sees EOF (it must check why, see the engine)."""
        consumer = self._consumers.pop(name, None)
        if consumer is not None:
            consumer.send.close()
            self.detached[name] = reason

    async def send(self, chunk: bytes, *, only: set[str] | None = None) -> None:
        """Give ``chunk`` to every attached consumer (or to those in ``only``), waiting for room."""
        self._chunks += 1
        self._bytes += len(chunk)
        for name, consumer in list(self._consumers.items()):
            if only is not None and name not in only:
                continue
            try:
                consumer.send.send_nowait(chunk)  # room in its buffer: no wait, so no timer either
                continue
            except anyio.WouldBlock:
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.detach(name, "consumer closed its stream")
                continue
            with anyio.move_on_after(self.stall_timeout) as scope:
                try:
                    await consumer.send.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self.detach(name, "consumer closed its stream")
                    continue
            if scope.cancelled_caught:
                self.detach(name, f"consumer took no data for {self.stall_timeout:g} s")
                if self.on_stall is not None:
                    self.on_stall(name)

    def close(self) -> None:
        """End of stream for every attached consumer."""
        for consumer in self._consumers.values():
            consumer.send.close()
        self._consumers.clear()

    def statistics(self) -> FanoutStatistics:
        return FanoutStatistics(self._chunks, self._bytes, len(self._consumers), len(self.detached))
