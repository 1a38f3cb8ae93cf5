"""Round trips a run no longer waits for one after the other (issue 25, the fixed cost at WAN latency): the source
and every target are listed at once, a target's copies and its image schema at once, the two listings of a region
(hidden images and the others) at once, and each image's source download opens while its target images are
created.

Each test proves the overlap at the emulator, with requests held until another request arrives: without the
overlap the held request would never be released (the test fails at its bound, ``fail_after``), and the
emulator's counts show the requests in flight together. No clock is read.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio

from pipeline.emulator import Emulator
from pipeline.emulator.faults import StatusFault

from .jobsetup import TARGETS, MiB, add, copies, job, run

#: How long a held request may wait for the one that releases it (only reached when the overlap is missing).
BOUND = 30


async def _release_when(arrived: list[anyio.Event], gate: anyio.Event) -> None:
    """Open ``gate`` once every event of ``arrived`` is set; past ``BOUND``, fail (and open it, so the emulator's
    held handlers end with the test)."""
    try:
        with anyio.fail_after(BOUND):
            for event in arrived:
                await event.wait()
    finally:
        gate.set()


async def test_the_source_and_every_target_are_listed_at_once(emulator: Emulator, tmp_path: Path) -> None:
    """The source's listings are held until both targets' listings have arrived, and each target's listing until
    its schema read has arrived: the run gets through only because they were all sent together. Both listings of
    the source (hidden and not) were held at once."""
    tenant = uuid.uuid4().hex
    image = add(emulator, tenant, "listed", size=MiB)
    spec = job(emulator, tmp_path, tenant)
    source_gate = anyio.Event()
    target_lists = {region: anyio.Event() for region in TARGETS}
    emulator.faults("KR1").holds["list"] = source_gate
    gates = {region: anyio.Event() for region in TARGETS}
    schemas = {region: anyio.Event() for region in TARGETS}
    for region in TARGETS:
        emulator.faults(region).arrivals["list"] = target_lists[region]
        emulator.faults(region).arrivals["schemas"] = schemas[region]
        emulator.faults(region).holds["list"] = gates[region]
    async with anyio.create_task_group() as tg:
        tg.start_soon(_release_when, list(target_lists.values()), source_gate)
        for region in TARGETS:
            tg.start_soon(_release_when, [schemas[region]], gates[region])
        summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    assert {s.outcome for s in summary.steps} == {"copied"}
    source = emulator.regions["KR1"].stats
    assert source.max_in_flight["list"] == 2  # os_hidden=false and os_hidden=true, together at the gate
    for region in TARGETS:
        stats = emulator.regions[region].stats
        assert stats.requests["schemas"] == 1
        # the target's listing began before the source's last listing ended, and the other way round
        assert stats.first_began["list"] < source.last_ended["list"]
        assert source.first_began["list"] < stats.last_ended["list"]
        assert set(copies(emulator, region, tenant)) == {image.id}


async def test_the_source_download_opens_while_the_target_images_are_created(emulator: Emulator,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    """Every target's create is held until the source's download has arrived: the copy is made only because the
    download was opened while the targets were still being prepared. The bytes are verified as always."""
    tenant = uuid.uuid4().hex
    image = add(emulator, tenant, "early", size=3 * MiB)
    spec = job(emulator, tmp_path, tenant)
    downloading, creates = anyio.Event(), anyio.Event()
    emulator.faults("KR1").arrivals["download"] = downloading
    for region in TARGETS:
        emulator.faults(region).holds["create"] = creates
    async with anyio.create_task_group() as tg:
        tg.start_soon(_release_when, [downloading], creates)
        summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    assert {(s.target, s.outcome) for s in summary.steps} == {(t, "copied") for t in TARGETS}
    source = emulator.regions["KR1"].stats
    assert source.requests["download"] == 1
    for region in TARGETS:
        stats = emulator.regions[region].stats
        assert source.first_began["download"] < stats.last_ended["create"]
        assert stats.requests["create"] == stats.uploads_completed == 1
        copy = copies(emulator, region, tenant)[image.id]
        assert (copy.status, copy.checksum) == ("active", image.checksum)


async def test_a_download_opened_for_targets_that_all_refuse_is_closed(emulator: Emulator, tmp_path: Path) -> None:
    """Every target refuses to create (403, an answer another try would only get again): the copies fail, each
    early download is closed, nothing is uploaded and nothing is left anywhere. The source served at most one
    download per image: none was retried."""
    tenant = uuid.uuid4().hex
    images = [add(emulator, tenant, f"refused-{i}", size=4 * MiB) for i in range(3)]
    spec = job(emulator, tmp_path, tenant)
    for region in TARGETS:
        emulator.faults(region).statuses.append(StatusFault(403, op="create", count=None, rate=1.0))
    summary = await run(spec)
    assert summary.exit_code == 1, summary.render()
    assert {s.outcome for s in summary.steps} == {"failed"}
    assert len(summary.steps) == len(images) * len(TARGETS)
    source = emulator.regions["KR1"].stats
    assert source.requests.get("download", 0) <= len(images)
    for region in TARGETS:
        stats = emulator.regions[region].stats
        assert stats.uploads_started == 0
        assert copies(emulator, region, tenant) == {}
