"""The transfer engine against the emulator with faults: one read, N targets, verified, resumable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pipeline.cloud import TransportConfig, new_session
from pipeline.cloud.retry import RetryPolicy
from pipeline.emulator import ByteFault, Emulator, StatusFault
from pipeline.models import Image
from pipeline.report.events import BytesRead, SourceResumed, TargetFailed, TargetFinished, TargetRetrying
from pipeline.transfer.engine import Engine, EngineSettings, TargetResult, TargetSpec

from .cloud import Cloud

MiB = 1 << 20
SIZE = 12 * MiB + 12345  # not a multiple of the chunk size: exercises the held-back tail


@pytest.fixture
def cloud(emulator_cloud: Cloud) -> Cloud:
    """Engine tests need the emulator's fault knobs, so they run on the emulator only."""
    return emulator_cloud


class Recorder:
    """Collects every event the engine emits."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def no_sleep(_: float) -> None:
    await anyio.lowlevel.checkpoint()


def settings(**overrides: Any) -> EngineSettings:
    base: dict[str, Any] = {
        "chunk_size": 1 * MiB, "buffer_depth": 2, "retries": 3, "stall_timeout": 5.0,
        "backoff": RetryPolicy(attempts=3, initial=0.01, maximum=0.05, sleep=no_sleep),
    }  # fmt: skip
    return EngineSettings(**{**base, **overrides})


def source_image(emulator: Emulator, tenant: str, size: int = SIZE, seed: str = "engine") -> Image:
    rec = emulator.store("KR1").add_synthetic(tenant, size, seed, {"name": f"src-{seed}"})
    return Image.from_api(rec.to_json())


def specs(cloud: Cloud, regions: Sequence[str] = ("KR2", "JP1")) -> list[TargetSpec]:
    fields = cloud.image_fields(name="copy", imgmig_source_id="x")
    return [TargetSpec(r, cloud.client(region=r), fields) for r in regions]


async def copy(cloud: Cloud, image: Image, regions: Sequence[str] = ("KR2", "JP1"), **kw: Any):  # type: ignore[no-untyped-def]
    recorder = Recorder()
    engine = Engine(settings(**kw), reporter=recorder)
    results = await engine.copy_image(cloud.client(region="KR1"), image, specs(cloud, regions))
    return results, recorder


async def assert_verified_copy(cloud: Cloud, result: TargetResult, image: Image) -> None:
    assert result.state == "done", result.error
    target = await cloud.client(region=result.region).get_image(result.target_id or "")
    assert target.status == "active"
    assert (target.size, target.checksum, target.os_hash_value) == (
        image.size,
        image.checksum,
        image.os_hash_value,
    )
    assert result.evidence is not None
    assert result.evidence.computed["md5"] == image.checksum
    assert result.evidence.computed["sha512"] == image.os_hash_value


async def wait_status(cloud: Cloud, result: TargetResult, status: str) -> None:
    """The server notices a broken upload asynchronously; wait (bounded) for the image to settle."""
    client = cloud.client(region=result.region)
    with anyio.fail_after(10):
        while (await client.get_image(result.target_id or "")).status != status:  # noqa: ASYNC110 - polls a server
            await anyio.sleep(0.05)


def images_in(emulator: Emulator, region: str, tenant: str) -> list[Any]:
    return [r for r in emulator.store(region).images.values() if r.owner == tenant]


async def test_one_read_feeds_every_target(cloud: Cloud, emulator: Emulator) -> None:
    """One source read fans out to two targets; both are verified against the source digests."""
    image = source_image(emulator, cloud.t1)
    results, rec = await copy(cloud, image)
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
        assert result.attempts == 1
    assert sum(e.n for e in rec.of(BytesRead)) == SIZE  # the source was read exactly once


async def test_download_dropped_twice_resumes_without_restarting_uploads(cloud: Cloud, emulator: Emulator) -> None:
    """Source drops at 30% and 70%: Range resumes twice, every target verified, no upload restarts."""
    image = source_image(emulator, cloud.t1)
    faults = emulator.faults("KR1")
    faults.drop_download = [ByteFault(int(SIZE * 0.3)), ByteFault(int(SIZE * 0.7))]
    results, rec = await copy(cloud, image)
    assert faults.fired["drop_download"] == 2
    resumed = rec.of(SourceResumed)
    # each resume starts where the client's bytes stopped: at the drop point or a little before it
    # (aiohttp drops what it had buffered but not yet handed out when the connection breaks)
    first, second = (r.offset for r in resumed)
    assert 0 < first <= int(SIZE * 0.3) < second <= int(SIZE * 0.7)
    assert not any(r.restarted for r in resumed)
    assert rec.of(TargetFailed) == []
    assert sum(e.n for e in rec.of(BytesRead)) == SIZE
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
        assert result.attempts == 1  # the uploads never noticed


async def test_source_ignoring_range_restarts_the_read_only(cloud: Cloud, emulator: Emulator) -> None:
    """When the source ignores Range (200), the read restarts from 0; targets still see one stream."""
    image = source_image(emulator, cloud.t1)
    faults = emulator.faults("KR1")
    faults.drop_download = [ByteFault(SIZE // 2)]
    faults.ignore_range = True
    results, rec = await copy(cloud, image)
    assert [r.restarted for r in rec.of(SourceResumed)] == [False, True]
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
        assert result.attempts == 1


async def test_target_with_503s_retries_alone(cloud: Cloud, emulator: Emulator) -> None:
    """JP1's upload gets 503 twice: it retries alone (re-reading the source), KR2 finishes at once."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=2))
    results, rec = await copy(cloud, image)
    await assert_verified_copy(cloud, results["KR2"], image)
    await assert_verified_copy(cloud, results["JP1"], image)
    assert results["KR2"].attempts == 1
    assert results["JP1"].attempts == 3
    assert {e.region for e in rec.of(TargetRetrying)} == {"JP1"}
    finished = [e.region for e in rec.of(TargetFinished)]
    assert finished.index("KR2") < finished.index("JP1")
    # the queued JP1 image was reused for the retries, not deleted and recreated
    assert len(images_in(emulator, "JP1", cloud.t1)) == 1


async def test_stalled_target_is_cut_loose_and_retried(cloud: Cloud, emulator: Emulator) -> None:
    """A target that stops reading mid-upload is cut loose after the job's read timeout (its upload
    cancelled, or its answer timed out) and retried alone; the other target is not held back."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("JP1").stall_upload = [ByteFault(2 * MiB)]
    async with new_session(TransportConfig(read_timeout=1.0)) as session:
        cloud.session = session  # the job's read_timeout bounds both socket reads and stalled consumers
        results, rec = await copy(cloud, image, stall_timeout=1.0)
        await assert_verified_copy(cloud, results["KR2"], image)
        await assert_verified_copy(cloud, results["JP1"], image)
    assert (results["KR2"].attempts, results["JP1"].attempts) == (1, 2)
    assert [(f.region, f.blame) for f in rec.of(TargetFailed)] == [("JP1", "target")]


async def test_corrupt_source_byte_is_detected_and_retried(cloud: Cloud, emulator: Emulator) -> None:
    """A flipped byte from the source fails the md5 check; nothing completes; the retry copies clean bytes."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("KR1").corrupt_download = [ByteFault(SIZE // 3)]
    results, rec = await copy(cloud, image)
    failures = rec.of(TargetFailed)
    assert {f.region for f in failures} == {"KR2", "JP1"}
    assert all(f.blame == "source" and "md5" in f.error for f in failures)
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
        assert result.attempts == 2
        assert result.deleted == []  # the bad stream never completed an upload, so nothing to delete
    assert len(images_in(emulator, "KR2", cloud.t1)) == 1


async def test_corruption_on_every_attempt_fails_without_done(cloud: Cloud, emulator: Emulator) -> None:
    """If the source is corrupt every time, the targets end failed, never done, and stay queued."""
    image = source_image(emulator, cloud.t1, size=3 * MiB)
    emulator.faults("KR1").corrupt_download = [ByteFault(100 + i) for i in range(10)]
    results, _ = await copy(cloud, image, retries=2)
    for result in results.values():
        assert result.state == "failed"
        assert result.blame == "source"
        assert result.attempts == 3
        await wait_status(cloud, result, "queued")


async def test_target_reporting_a_different_checksum_is_deleted_and_redone(cloud: Cloud, emulator: Emulator) -> None:
    """KR2 stores one byte wrong, so it reports another checksum: that copy is deleted and made again."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("KR2").corrupt_upload = [ByteFault(SIZE // 2)]
    results, rec = await copy(cloud, image)
    await assert_verified_copy(cloud, results["JP1"], image)
    kr2 = results["KR2"]
    await assert_verified_copy(cloud, kr2, image)
    assert kr2.attempts == 2
    assert len(kr2.deleted) == 1  # the wrong copy, gone
    assert kr2.deleted[0] != kr2.target_id
    assert kr2.deleted[0] not in emulator.store("KR2").images
    failures = rec.of(TargetFailed)
    assert [(f.region, f.blame) for f in failures] == [("KR2", "target")]
    assert "checksum" in failures[0].error
    assert len(images_in(emulator, "KR2", cloud.t1)) == 1  # never left behind


async def test_zero_byte_image(cloud: Cloud, emulator: Emulator) -> None:
    """A 0-byte image is copied and verified like any other."""
    rec = emulator.store("KR1").add_bytes(cloud.t1, b"", {"name": "empty"})
    image = Image.from_api(rec.to_json())
    results, _ = await copy(cloud, image)
    for result in results.values():
        await assert_verified_copy(cloud, result, image)


async def test_cancel_mid_transfer_reports_each_target(cloud: Cloud, emulator: Emulator) -> None:
    """Cancelling mid-transfer ends every task; each target is reported cancelled; images go queued."""
    image = source_image(emulator, cloud.t1, size=64 * MiB)
    emulator.faults("KR1").bandwidth = 8 * MiB  # slow enough to be mid-transfer
    recorder = Recorder()
    engine = Engine(settings(), reporter=recorder)
    results: dict[str, TargetResult] = {}
    during: list[int] = []

    async def count_engine_tasks() -> None:
        await anyio.sleep(0.5)
        during.append(sum(any("pipeline/transfer/" in f for f in _await_chain(t)) for t in asyncio.all_tasks()))

    with anyio.move_on_after(1.0) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(count_engine_tasks)
            await engine.copy_image(cloud.client(region="KR1"), image, specs(cloud), results=results)
    assert scope.cancelled_caught
    assert during[0] >= 3  # the detection below sees the engine's tasks while they run
    # structured concurrency: no task of the engine outlives the cancelled call
    leftovers = [t for t in asyncio.all_tasks() if any("pipeline/transfer/" in f for f in _await_chain(t))]
    assert leftovers == []
    assert {r.state for r in results.values()} == {"cancelled"}
    assert {e.state for e in recorder.of(TargetFinished)} == {"cancelled"}
    assert all(0 < r.bytes < image.size for r in results.values())  # type: ignore[operator]
    for result in results.values():
        await wait_status(cloud, result, "queued")


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """The source files of every coroutine a task is suspended in, outermost first."""
    files, coro = [], task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        files.append(coro.cr_code.co_filename)
        coro = coro.cr_await
    return files


async def test_existing_queued_copy_is_reused(cloud: Cloud, emulator: Emulator) -> None:
    """A queued copy left by an interrupted run is reused, not duplicated."""
    image = source_image(emulator, cloud.t1)
    client = cloud.client(region="KR2")
    leftover = await client.create_image(cloud.image_fields(name="leftover"))
    spec = TargetSpec("KR2", client, cloud.image_fields(name="copy"), existing=leftover)
    results = await Engine(settings()).copy_image(cloud.client(region="KR1"), image, [spec])
    assert results["KR2"].target_id == leftover.id
    await assert_verified_copy(cloud, results["KR2"], image)
    assert len(images_in(emulator, "KR2", cloud.t1)) == 1


@pytest.mark.parametrize("depth", [1, 4])
async def test_spool_serves_retries(cloud: Cloud, emulator: Emulator, tmp_path: Any, depth: int) -> None:
    """With a spool, a target retry reads the spool, not the source; the spool is removed afterwards."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    recorder = Recorder()
    engine = Engine(settings(spool_dir=tmp_path / "spool", buffer_depth=depth), reporter=recorder)
    results = await engine.copy_image(cloud.client(region="KR1"), image, specs(cloud))
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
    assert results["JP1"].attempts == 2
    assert sum(e.n for e in recorder.of(BytesRead)) == SIZE  # the retry was served by the spool
    assert list((tmp_path / "spool").iterdir()) == []


# === blame the right side, and contain each target's trouble


async def test_slow_source_never_stalls_a_target(cloud: Cloud, emulator: Emulator) -> None:
    """A source slower than the stall timeout (each 1 MiB chunk takes 2 s to arrive, the stall timeout is
    1 s): the targets wait without being blamed or cancelled; one attempt each, every copy verified."""
    image = source_image(emulator, cloud.t1, size=3 * MiB)
    emulator.faults("KR1").bandwidth = MiB // 2
    results, rec = await copy(cloud, image, stall_timeout=1.0)
    assert rec.of(TargetFailed) == []
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
        assert result.attempts == 1
    assert {r: emulator.regions[r].stats.uploads_started for r in ("KR2", "JP1")} == {"KR2": 1, "JP1": 1}


async def test_throttled_source_resume_blames_no_target(cloud: Cloud, emulator: Emulator) -> None:
    """The source drops mid-image and its resume is answered 429 with a Retry-After longer than the
    stall timeout: the targets sit idle meanwhile and are neither blamed nor cancelled."""
    image = source_image(emulator, cloud.t1)
    faults = emulator.faults("KR1")
    faults.drop_download = [ByteFault(2 * MiB)]
    faults.statuses.append(StatusFault(429, op="download", count=1, retry_after=2.5, skip=1))
    slow_backoff = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)  # really waits the Retry-After
    recorder = Recorder()
    engine = Engine(settings(stall_timeout=1.0, backoff=slow_backoff), reporter=recorder)
    source = cloud.client(region="KR1")
    source.retry = slow_backoff
    results = await engine.copy_image(source, image, specs(cloud))
    assert faults.fired == {"drop_download": 1, "status_429": 1}  # the throttle really happened mid-stream
    assert recorder.of(TargetFailed) == []
    assert len(recorder.of(SourceResumed)) == 1
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
        assert result.attempts == 1


async def test_failed_verification_read_stays_with_its_target(cloud: Cloud, emulator: Emulator) -> None:
    """JP1 hashes with sha256, so its copy is read back to check it, and that read fails (500s): only JP1
    is retried, KR2 is done at once, and nothing escapes the engine."""
    image = source_image(emulator, cloud.t1)
    emulator.store("JP1").hashing_algorithm = "sha256"
    # five 500s: every low-level try of the read-back fails (the client makes five), the retry finds the
    # copy active with the source's size and md5
    emulator.faults("JP1").statuses.append(StatusFault(500, op="download", count=5))
    results, rec = await copy(cloud, image, retries=6)
    await assert_verified_copy(cloud, results["KR2"], image)
    assert results["KR2"].attempts == 1
    assert results["JP1"].state == "done", results["JP1"].error
    assert [(f.region, f.blame) for f in rec.of(TargetFailed)] == [("JP1", "target")]
    assert "cannot read back" in rec.of(TargetFailed)[0].error
    assert emulator.faults("JP1").fired["status_500"] == 5


class SpoolSaboteur(Recorder):
    """When the first retry is announced, replaces the spool file: with a directory (reading it back fails
    with an OSError) or with a short file (it reads back incomplete)."""

    def __init__(self, spool_dir: Any, how: str) -> None:
        super().__init__()
        self.spool_dir, self.how, self.done = spool_dir, how, False

    def emit(self, event: Any) -> None:
        super().emit(event)
        if isinstance(event, TargetRetrying) and not self.done:
            self.done = True
            (path,) = list(self.spool_dir.iterdir())
            path.unlink()  # the writer keeps its open file; the next reader finds this instead
            if self.how == "unreadable":
                path.mkdir()
            else:
                path.write_bytes(b"short")


@pytest.mark.parametrize("how", ["unreadable", "short"])
async def test_a_spool_that_cannot_serve_is_dropped_for_the_source(
    cloud: Cloud, emulator: Emulator, tmp_path: Any, how: str
) -> None:
    """A spool that cannot be read back, or reads back short, fails only that pass: the spool is never
    used again and the retry reads the source; every copy is verified, nothing escapes."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    recorder = SpoolSaboteur(tmp_path / "spool", how)
    engine = Engine(settings(spool_dir=tmp_path / "spool"), reporter=recorder)
    results = await engine.copy_image(cloud.client(region="KR1"), image, specs(cloud))
    assert recorder.done
    for result in results.values():
        await assert_verified_copy(cloud, result, image)
    assert results["JP1"].attempts == 3  # the 503, the spool pass that failed, the pass from the source
    assert sum(e.n for e in recorder.of(BytesRead)) == 2 * SIZE  # read once more from the source, not the spool
    assert any(f.blame == "source" and "spool" in f.error for f in recorder.of(TargetFailed))


def test_a_spool_cut_short_is_not_complete(tmp_path: Any) -> None:
    """A spool whose writer was detached early (fewer bytes than the image) is not complete, even when
    the stream itself verified; one that holds every byte of a verified stream is."""
    from pipeline.transfer.source import Spool

    short = Spool.open(tmp_path, "a", 10)
    assert short is not None
    short.write(b"12345")
    short.settle(verified=True)
    assert not short.complete
    assert short.failed is not None
    assert "5 of 10" in short.failed
    whole = Spool.open(tmp_path, "b", 3)
    assert whole is not None
    whole.write(b"abc")
    whole.settle(verified=True)
    assert whole.complete


async def test_retries_zero_means_one_attempt(cloud: Cloud, emulator: Emulator) -> None:
    """retries = 0: one attempt, counted at the server: one 503 on JP1's upload fails JP1 for good
    (exactly one upload request reached it) and one 503 on KR2's verification read fails KR2 (one GET)."""
    image = source_image(emulator, cloud.t1)
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    emulator.faults("KR2").statuses.append(StatusFault(503, op="get", count=1))
    results, _ = await copy(cloud, image, retries=0)
    assert {r: results[r].state for r in ("KR2", "JP1")} == {"KR2": "failed", "JP1": "failed"}
    assert emulator.regions["JP1"].stats.requests["upload"] == 1
    assert emulator.regions["KR2"].stats.requests["get"] == 1
    assert results["JP1"].attempts == results["KR2"].attempts == 1
