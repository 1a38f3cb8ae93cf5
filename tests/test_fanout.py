"""Fanout in memory: bounded buffers, backpressure from the slowest consumer, detaching failures."""

from __future__ import annotations

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.transfer.fanout import Fanout


async def collect(stream: MemoryObjectReceiveStream[bytes], into: list[bytes]) -> None:
    with stream:
        async for chunk in stream:
            into.append(chunk)


async def test_every_consumer_gets_every_chunk_in_order() -> None:
    """Three consumers each receive the full sequence, then EOF."""
    fan = Fanout(2)
    got: dict[str, list[bytes]] = {name: [] for name in ("a", "b", "c")}
    async with anyio.create_task_group() as tg:
        for name, chunks in got.items():
            tg.start_soon(collect, fan.add(name), chunks)
        for i in range(10):
            await fan.send(bytes([i]))
        fan.close()
    assert all(chunks == [bytes([i]) for i in range(10)] for chunks in got.values())
    assert fan.statistics().chunks == 10


async def test_slowest_consumer_sets_the_pace_and_buffers_stay_bounded() -> None:
    """The producer cannot run ahead of a stuck consumer by more than the buffer depth."""
    fan = Fanout(3)
    fast_seen: list[bytes] = []
    sent = 0

    async def produce() -> None:
        nonlocal sent
        for i in range(100):
            await fan.send(bytes([i % 256]))
            sent += 1

    with fan.add("slow") as slow:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, fan.add("fast"), fast_seen)
            tg.start_soon(produce)
            await anyio.sleep(0.1)
            assert sent == 3  # exactly the slow consumer's buffer depth
            assert slow.statistics().current_buffer_used == 3
            tg.cancel_scope.cancel()
    fan.close()
    assert len(fast_seen) <= 4


async def test_closed_consumer_is_detached_and_others_continue() -> None:
    """A consumer that closes its stream is detached with a reason; the others keep receiving."""
    fan = Fanout(1)
    fan.add("bad").close()
    received: list[bytes] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, fan.add("good"), received)
        for i in range(5):
            await fan.send(bytes([i]))
        fan.close()
    assert fan.detached == {"bad": "consumer closed its stream"}
    assert len(received) == 5


async def test_stalled_consumer_is_detached_after_timeout() -> None:
    """A consumer that takes nothing for stall_timeout seconds is detached and its owner told; the
    producer goes on."""
    stalled: list[str] = []
    fan = Fanout(1, stall_timeout=0.1, on_stall=stalled.append)
    with fan.add("stuck"), anyio.fail_after(5):
        for i in range(3):
            await fan.send(bytes([i]))
    assert "no data" in fan.detached["stuck"]
    assert stalled == ["stuck"]


def test_depth_must_be_bounded() -> None:
    """A zero or negative depth is refused (backpressure needs a bounded buffer)."""
    with pytest.raises(ValueError, match="at least 1"):
        Fanout(0)
