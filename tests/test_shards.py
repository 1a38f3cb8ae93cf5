"""Shards: K processes at once, each owning the source images whose id hashes to its index, as the pods of a
Kubernetes Indexed Job run them (``--shards K`` with ``JOB_COMPLETION_INDEX``). Counted at the server: every
image is uploaded once per target whatever the shards do (one is killed mid-transfer and restarted alone),
a shard never touches another shard's leftover, the merged status says all done, and changing K (then
dropping shards) moves nothing and deletes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.config import Shard
from pipeline.config.shard import partition
from pipeline.state.journal import Journal
from pipeline.state.lock import JobLock

from .chaos import state
from .jobsetup import (
    PASSWORD,
    PASSWORD_ENV,
    SourceImage,
    admin_images,
    check_invariants,
    check_invariants_api,
    make_source,
    new_tenants,
    run_cli,
    write_job,
)
from .procs import EmulatorProcess, emulator_process

if TYPE_CHECKING:
    from .realglance import GlanceCluster

TARGETS = ("KR2", "JP1")
K = 3
ACCEPT = '[copy]\naccept_members_with = ["partner"]\n'


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def _sources(identity_url: str, tenant: str, partner: str, other: str, shards: int) -> list[SourceImage]:
    """Images in KR1 until every shard of ``shards`` owns at least two (ids are random)."""
    specs: list[tuple[int, dict[str, Any], dict[str, str]]] = [
        ((1 << 20) + 7 * i, {"name": f"sharded-{i:02d}", "os_distro": "ubuntu", "tags": ["dr"]}, {}) for i in range(9)
    ]  # fmt: skip
    specs[1] = (specs[1][0], {**specs[1][1], "visibility": "shared"}, {"partner": "accepted"})
    sources = make_source(identity_url, tenant, partner=partner, other=other, specs=specs)
    for extra in range(41):  # bounded: each round adds one image (12 rounds were short 3 times in 1,000)
        owned = Counter(partition(s.id, shards) for s in sources)
        if all(owned[i] >= 2 for i in range(shards)):
            return sources
        if extra == 40:
            break
        more = [((1 << 20) + extra, {"name": f"sharded-x{extra:02d}"}, {})]
        sources += make_source(identity_url, tenant, partner=partner, other=other, specs=more)
    raise AssertionError(f"could not give every shard two images: {owned}")


def _launch(
    job: Path, shards: int, index: int, report: Path, env: dict[str, str] | None = None, *extra: str
) -> subprocess.Popen[str]:
    full = {**os.environ, PASSWORD_ENV: PASSWORD, "JOB_COMPLETION_INDEX": str(index), **(env or {})}
    argv = [sys.executable, "-m", "pipeline", "run", str(job), "--shards", str(shards), "--no-progress",
            "--report", str(report), *extra]  # fmt: skip
    return subprocess.Popen(argv, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


def _report(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _queued_leftover(identity_url: str, tenant: str, job: str, src: SourceImage, region: str) -> str:
    """A queued copy of ``src`` carrying the job's provenance, as a run killed before its upload leaves it."""

    async def create() -> str:
        async with new_session() as session:
            client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), region)
            image = await client.create_image({
                "name": src.name, "disk_format": "raw", "container_format": "bare", "os_type": "linux",
                "imgmig_job": job, "imgmig_source_id": src.id, "imgmig_source_region": "KR1",
                "imgmig_source_checksum": src.checksum,
            })  # fmt: skip
            return image.id

    return anyio.run(create)


def test_partition_is_stable_and_spreads() -> None:
    """The partition is a fixed function of the id (not Python's salted hash()), and spreads ids evenly."""
    ids = [f"id-{i}" for i in range(8)]
    # fixed literals: Python's hash() is salted per process, so it could not give these same values every run
    assert [partition(image_id, 3) for image_id in ids] == [0, 2, 1, 1, 1, 0, 2, 1]
    # fixed for every host and run: the first 8 bytes of SHA-256 of the id, big endian, modulo K (computed here)
    for k in (1, 2, 3, 7, 1024):
        expected = [int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % k for image_id in ids]
        assert [partition(image_id, k) for image_id in ids] == expected, k
    assert [partition(f"0b7a4b8e-1111-4a5c-9b7e-00000000000{i}", 3) for i in (1, 2, 3, 4)] == [2, 2, 1, 2]
    assert partition("x", 5) == int.from_bytes(hashlib.sha256(b"x").digest()[:8], "big") % 5
    spread = Counter(partition(str(uuid.UUID(int=i)), 4) for i in range(4000))
    assert all(900 < spread[i] < 1100 for i in range(4)), spread
    assert Shard(1, 3).owns("0b7a4b8e-1111-4a5c-9b7e-000000000003")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--shards", "3"], {}, "JOB_COMPLETION_INDEX is not set"),
        (["--shards", "3"], {"JOB_COMPLETION_INDEX": "3"}, "shard index 3 is outside 0..2"),
        (["--shards", "3"], {"JOB_COMPLETION_INDEX": "x"}, "'x', not an index"),
        (["--shard", "1of3"], {}, "expected I/K"),
        (["--shard", "0/0"], {}, "between 1 and"),
        (["--shard", "0/2", "--shards", "2"], {}, "not both"),
    ],
)
def test_bad_shard_arguments_are_usage_errors(tmp_path: Path, args: list[str], env: dict[str, str],
                                              expected: str) -> None:  # fmt: skip
    job = write_job(tmp_path / "job.toml", name="bad-shard", identity_url="http://127.0.0.1:9/v2.0",
                    tenant="t", journal=tmp_path / "state")  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), *args], capture_output=True,
                            text=True, env={**clean, PASSWORD_ENV: PASSWORD, **env}, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # nothing started


def test_three_shards_at_once_then_other_layouts(emu: EmulatorProcess, tmp_path: Path) -> None:
    """K = 3 processes at once; shard 1 is killed mid-transfer and restarted alone; a queued leftover of one
    of shard 1's images survives the other shards' orphan sweeps and is reused by shard 1. Every source image
    is uploaded exactly once per target (counted at the emulator), one verified copy each, nothing extra,
    and the merged status says all done. Then K = 2 and then no sharding: 0 bytes, nothing deleted."""
    tenant, partner, other = new_tenants(3)
    sources = _sources(emu.identity_url, tenant, partner, other, K)
    job = write_job(tmp_path / "job.toml", name="sharded", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", partner=partner, extra=ACCEPT)  # fmt: skip
    mine = [s for s in sources if partition(s.id, K) == 1]
    leftover = _queued_leftover(emu.identity_url, tenant, "sharded", mine[0], "KR2")
    before = state(emu.admin)["stats"]

    procs = [_launch(job, K, i, tmp_path / f"shard{i}.json",
                     {"IMGMIG_FAILPOINTS": "uploading@2"} if i == 1 else None) for i in range(K)]  # fmt: skip
    results = [_wait(p) for p in procs]
    assert results[1][0] == -9, results[1][1][-2000:]  # killed mid-transfer
    for i in (0, 2):
        assert results[i][0] == 0, results[i][1][-2000:]
        report = _report(tmp_path / f"shard{i}.json")
        assert report["orphans_deleted"] == 0
        owned = [s for s in sources if partition(s.id, K) == i]
        assert report["counts"]["copied"] == len(owned) * len(TARGETS)
    ids_of = {img["id"] for r in TARGETS for img in admin_images(emu.admin, r)}
    assert leftover in ids_of  # shards 0 and 2 never swept shard 1's leftover

    again = run_cli("run", str(job), "--shards", str(K), "--no-progress", "--report", str(tmp_path / "again1.json"),
                    env={"JOB_COMPLETION_INDEX": "1"})  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    check_invariants(emu.admin, "sharded", sources, TARGETS, tenant=tenant)
    kr2 = {img["imgmig_source_id"]: img["id"] for img in admin_images(emu.admin, "KR2")
           if img.get("imgmig_job") == "sharded"}  # fmt: skip
    assert kr2[mine[0].id] == leftover  # reused by its own shard, never deleted by another

    after = state(emu.admin)["stats"]
    for region in TARGETS:
        completed = after[region]["completed_by_image"]
        new = {i: n - before[region]["completed_by_image"].get(i, 0) for i, n in completed.items()}
        copies = {img["id"]: img.get("imgmig_source_id") for img in admin_images(emu.admin, region)}
        per_source = Counter(copies[i] for i, n in new.items() for _ in range(n) if n > 0)
        assert set(new) <= set(copies)  # no upload went to an image that is gone now
        assert per_source == Counter({s.id: 1 for s in sources if s.size > 0}), region  # once per image

    status = run_cli("status", str(job), "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert [s["state"] for s in view["shards"]] == ["done"] * K
    assert view["counts"] == {"done": len(sources) * len(TARGETS)}
    assert len(view["images"]) == len(sources)
    assert view["other_layouts"] == []
    text = run_cli("status", str(job)).stdout
    assert all(f"shard {i}/{K}: done" in text for i in range(K))

    snapshot = {r: sorted(img["id"] for img in admin_images(emu.admin, r)) for r in TARGETS}
    prom = tmp_path / "imgmig.prom"
    procs = [_launch(job, 2, i, tmp_path / f"k2-{i}.json", None, "--metrics-file", str(prom)) for i in range(2)]
    for i, proc in enumerate(procs):
        code, err = _wait(proc)
        assert code == 0, err[-2000:]
        report = _report(tmp_path / f"k2-{i}.json")
        assert (report["bytes_written"], report["orphans_deleted"]) == (0, 0)
        # one metrics file per shard, every sample labelled with it
        families = text_string_to_metric_families((tmp_path / f"imgmig.shard-{i}-of-2.prom").read_text())
        samples = [s for family in families for s in family.samples]
        assert samples
        assert {s.labels.get("shard") for s in samples} == {f"{i}/2"}
        up_to_date = next(s.value for s in samples if s.name == "imgmig_images" and s.labels["outcome"] == "up_to_date")
        assert up_to_date == report["counts"]["up_to_date"]
    assert not prom.exists()
    whole = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "whole.json"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    report = _report(tmp_path / "whole.json")
    assert (report["bytes_written"], report["orphans_deleted"]) == (0, 0)
    assert report["counts"]["up_to_date"] == len(sources) * len(TARGETS)
    assert {r: sorted(img["id"] for img in admin_images(emu.admin, r)) for r in TARGETS} == snapshot
    merged = json.loads(run_cli("status", str(job), "--json").stdout)
    assert [s["shard"] for s in merged["shards"]] == ["0/2", "1/2"]  # the newest sharded layout
    assert merged["other_layouts"] == [1, 3]  # the unsharded journal and K = 3


def test_merged_status_names_running_failed_and_missing_shards(tmp_path: Path) -> None:
    """Three shard journals: one done, one failed, one never ran, and one shard running right now."""
    job = write_job(tmp_path / "job.toml", name="merged", identity_url="http://127.0.0.1:9/v2.0", tenant="t",
                    journal=tmp_path / "state")  # fmt: skip
    outcomes = {0: ("succeeded", 0), 2: ("failed", 1), 3: None}
    for index, outcome in outcomes.items():
        journal = Journal.open(tmp_path / "state" / f"shard-{index}-of-4", "merged")
        journal.record("run_started", run=f"run{index}", pid=1)
        journal.record("image", image_id=f"img{index}", name=f"n{index}", plan={"KR2": {"state": "planned"}})
        if outcome is not None:
            state = "done" if outcome[1] == 0 else "failed"
            journal.record("target", image_id=f"img{index}", region="KR2", state=state)
            journal.record("run_finished", run=f"run{index}", outcome=outcome[0], exit_code=outcome[1])
        journal.close()
    with JobLock(tmp_path / "state" / "shard-3-of-4", "merged").held():
        view = json.loads(run_cli("status", str(job), "--json").stdout)
        text = run_cli("status", str(job)).stdout
    assert [(s["shard"], s["state"]) for s in view["shards"]] == [
        ("0/4", "done"), ("1/4", "never ran"), ("2/4", "failed"), ("3/4", "running")]  # fmt: skip
    assert view["counts"] == {"done": 1, "failed": 1, "planned": 1}
    assert view["running"]["shard"] == "3/4"
    assert "shard 1/4: never ran" in text
    assert "shard 2/4: failed" in text
    assert "RUNNING now (shard 3/4)" in text
    one = json.loads(run_cli("status", str(job), "--json", "--shard", "2/4").stdout)
    assert "shards" not in one
    assert one["counts"] == {"failed": 1}


def test_report_reads_the_journal_of_the_shard_it_is_given(tmp_path: Path) -> None:
    """`imgmig report` of a sharded job: without a shard, exit 2 naming the shards and --shard; with
    --shard I/K (or --shards K and JOB_COMPLETION_INDEX), the page of that shard's last run only."""
    job = write_job(tmp_path / "job.toml", name="reported", identity_url="http://127.0.0.1:9/v2.0", tenant="t",
                    journal=tmp_path / "state")  # fmt: skip
    for index in range(2):
        journal = Journal.open(tmp_path / "state" / f"shard-{index}-of-2", "reported")
        journal.record("run_started", run=f"run-of-{index}", pid=1)
        journal.record("image", image_id=f"img{index}", name=f"image-of-shard-{index}",
                       plan={"KR2": {"action": "copy", "state": "planned"}})  # fmt: skip
        journal.record("target", image_id=f"img{index}", region="KR2", state="done", target_id=f"copy{index}")
        journal.record("run_finished", run=f"run-of-{index}", outcome="succeeded", exit_code=0)
        journal.close()
    page = tmp_path / "page.html"
    whole = run_cli("report", str(job), "--html", str(page))
    assert whole.returncode == 2, whole.stderr
    assert "runs in shards" in whole.stderr
    assert "0/2, 1/2" in whole.stderr
    assert "--shard I/K" in whole.stderr
    assert "Traceback" not in whole.stderr
    assert not page.exists()

    one = run_cli("report", str(job), "--html", str(page), "--shard", "1/2")
    assert one.returncode == 0, one.stderr
    text = page.read_text()
    assert "image-of-shard-1" in text
    assert "run-of-1" in text
    assert "image-of-shard-0" not in text

    zero = run_cli("report", str(job), "--html", str(page), "--shards", "2", env={"JOB_COMPLETION_INDEX": "0"})
    assert zero.returncode == 0, zero.stderr
    text = page.read_text()
    assert "image-of-shard-0" in text
    assert "image-of-shard-1" not in text


@pytest.mark.real_glance
def test_three_shards_at_once_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """The same three processes at once against real Glance 33: together they copy every image exactly
    once per target (one verified copy each, nothing extra; the bytes the shards wrote add up to each image
    once per target), and the merged status says all done."""
    tenant, partner, other = new_tenants(3)
    sources = _sources(glance_cluster.identity_url, tenant, partner, other, K)
    job = write_job(tmp_path / "job.toml", name="glance-sharded", identity_url=glance_cluster.identity_url,
                    tenant=tenant, journal=tmp_path / "state", partner=partner, extra=ACCEPT)  # fmt: skip
    before = glance_cluster.state()["stats"]
    procs = [_launch(job, K, i, tmp_path / f"shard{i}.json") for i in range(K)]
    for proc in procs:
        code, err = _wait(proc)
        assert code == 0, err[-2000:]
    reports = [_report(tmp_path / f"shard{i}.json") for i in range(K)]
    assert sum(r["bytes_written"] for r in reports) == sum(s.size for s in sources) * len(TARGETS)
    after = glance_cluster.state()["stats"]
    for region in TARGETS:  # one upload per image with data, across all shards
        started = after[region]["uploads_started"] - before[region]["uploads_started"]
        assert started == sum(1 for s in sources if s.size > 0), region
    check_invariants_api(glance_cluster.identity_url, "glance-sharded", sources, TARGETS, tenant=tenant,
                         member_status={partner: "accepted"})  # fmt: skip
    view = json.loads(run_cli("status", str(job), "--json").stdout)
    assert [s["state"] for s in view["shards"]] == ["done"] * K
