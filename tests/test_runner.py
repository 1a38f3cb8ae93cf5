"""The runner's retry budget end to end: ``[transfer] retries = 0`` means exactly one attempt of every
request of every image x target, counted at the emulator."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from pipeline.emulator import Emulator, StatusFault

from .test_metadata import MiB, add, job, run


async def test_retries_zero_gives_one_attempt(emulator: Emulator, tmp_path: Path) -> None:
    """With retries = 0 a single 503 fails that image x target for good: JP1 received exactly one upload
    per image, KR2 exactly one create per image; the other targets' copies complete."""
    tenant = uuid.uuid4().hex
    sources = [add(emulator, tenant, f"img-{i}", size=2 * MiB) for i in range(3)]
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    emulator.faults("KR2").statuses.append(StatusFault(503, op="create", count=1))
    spec = job(emulator, tmp_path, tenant)
    spec = replace(spec, transfer=spec.transfer.model_copy(update={"retries": 0}))
    summary = await run(spec)
    assert summary.exit_code == 1
    failed = sorted(s.target for s in summary.steps if s.state == "failed")
    assert failed == ["JP1", "KR2"]  # one image x target each: the one that met the 503
    assert emulator.regions["JP1"].stats.requests["upload"] == len(sources)  # one try each, no retry
    assert emulator.regions["KR2"].stats.requests["create"] == len(sources)
    assert summary.retries == 0


async def test_request_counts_match_the_server(emulator: Emulator, tmp_path: Path) -> None:
    """The run summary counts every Image API request by kind and region, and the counts equal what each
    emulated region received (the emulator counts them on its side)."""
    tenant = uuid.uuid4().hex
    for i in range(3):
        add(emulator, tenant, f"img-{i}", size=MiB, tags=["t"], os_distro="ubuntu")
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 0
    counted = summary.requests.by_region()
    for region in ("KR1", "KR2", "JP1"):
        assert counted[region] == emulator.regions[region].stats.requests, region
    assert counted["KR2"]["upload"] == counted["JP1"]["upload"] == 3
    assert summary.to_json()["requests"] == counted
