"""The node_exporter textfile metrics: every value against the run summary, atomic replacement under a
concurrent reader, the shard label, last_success over the journal's runs, and one real run on the emulator."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.emulator import Emulator
from pipeline.models import Image
from pipeline.outcomes import OUTCOMES
from pipeline.plan.planner import Action, ImagePlan, Plan, Step
from pipeline.report.events import BytesRead, BytesWritten, SourceResumed, TargetRetrying
from pipeline.report.metrics import MetricsFile
from pipeline.report.summary import RunSummary, StepFinished
from pipeline.run.runner import RunControls, run_job
from pipeline.state.journal import Journal
from pipeline.state.records import RunEntry, last_success

from .jobsetup import MiB, add, copies, job

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
T0 = 1_700_000_000.0
JOB = {"imgmig_job": "nightly"}


def parse(path: Path) -> Samples:
    """Every sample of the file, keyed by (sample name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, key
            out[key] = sample.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset({**JOB, **labels}.items())


def plan() -> Plan:
    """Images a..e on KR2 + JP1; d is skipped as a whole (not active)."""

    def image(image_id: str, *steps: Step, skipped: str | None = None) -> ImagePlan:
        return ImagePlan(Image({"id": image_id, "status": "active"}), steps, skipped=skipped)

    copy = Action.COPY
    return Plan(
        images=(
            image("a", Step("KR2", copy), Step("JP1", copy)),
            image("b", Step("KR2", Action.METADATA), Step("JP1", Action.SKIP, "up to date")),
            image("c", Step("KR2", copy), Step("JP1", copy)),
            image("d", skipped="not active"),
            image("e", Step("KR2", Action.SKIP, "excluded")),
        ),
        targets=("KR2", "JP1"),
    )


def summary(clock: list[float], metrics: MetricsFile) -> RunSummary:
    """A finished run (exit 1): every outcome once, c -> JP1 never reached, target KR3 unavailable."""
    s = RunSummary(job="nightly", run_id="r1", started_at=T0, started=clock[0], plan=plan())
    reporter = s.reporter(metrics)
    for event in (BytesRead("a", 100), BytesRead("c", 50), BytesWritten("a", "KR2", 100),
                  BytesWritten("a", "JP1", 60), BytesWritten("c", "KR2", 30),
                  TargetRetrying("a", "JP1", 1, "503", 0.1), TargetRetrying("a", "JP1", 2, "503", 0.2),
                  SourceResumed("c", 20, 1, "reset")):  # fmt: skip
        reporter.emit(event)
    for step in (StepFinished("a", "a", "KR2", "copy", "done", bytes=100),
                 StepFinished("a", "a", "JP1", "copy", "failed", bytes=60, error="503"),
                 StepFinished("b", "b", "KR2", "metadata", "done"),
                 StepFinished("b", "b", "JP1", "skip", "done", reason="up to date"),
                 StepFinished("c", "c", "KR2", "copy", "cancelled", bytes=30),
                 StepFinished("e", "e", "KR2", "skip", "skipped", reason="excluded")):  # fmt: skip
        s.step_finished(step)
    s.unavailable["KR3"] = "target KR3 is unavailable: down"
    s.orphans_deleted, s.parked_images = 2, 1
    clock[0] += 42.5
    s.finish(lambda: clock[0])
    return s


def test_final_file_matches_the_summary(tmp_path: Path) -> None:
    """The final file holds exactly the summary's figures (to_json), every sample labelled, nothing else."""
    clock = [1000.0]
    metrics = MetricsFile(tmp_path / "imgmig.prom", "nightly", source_region="KR1", clock=lambda: clock[0])
    s = summary(clock, metrics)
    metrics.write(s, final=True, last_success=T0 - 86_400, requests={("upload", "KR2"): 3, ("create", "JP1"): 1})
    report = s.to_json()
    samples = parse(tmp_path / "imgmig.prom")
    counts = report["counts"]
    expected = {
        key("imgmig_bytes_read_total", region="KR1"): report["bytes_read"],
        key("imgmig_bytes_written_total", region="KR2"): 130,
        key("imgmig_bytes_written_total", region="JP1"): 60,
        **{key("imgmig_images", outcome=o): counts[o] for o in OUTCOMES},
        key("imgmig_parked_images"): counts["parked_images"],
        key("imgmig_unavailable_targets", reason="unreachable"): counts["unavailable_targets"],
        key("imgmig_unavailable_targets", reason="quota_full"): counts["quota_full_targets"],
        key("imgmig_retries_total"): report["retries"],
        key("imgmig_source_resumes_total"): report["source_resumes"],
        key("imgmig_orphans_deleted_total"): report["orphans_deleted"],
        key("imgmig_requests_total", kind="upload", region="KR2"): 3,
        key("imgmig_requests_total", kind="create", region="JP1"): 1,
        key("imgmig_run_in_progress"): 0,
        key("imgmig_run_start_timestamp_seconds"): report["started_at"],
        key("imgmig_run_duration_seconds"): report["duration_seconds"],
        key("imgmig_exit_code"): report["exit_code"],
        key("imgmig_last_run_timestamp_seconds"): T0 + 42.5,
        # failed a->JP1, cancelled c->KR2, unreached c->JP1, and a, b, c, e on the unavailable KR3
        key("imgmig_copies_out_of_sync"): 1 + 1 + 1 + 4,
        key("imgmig_last_success_timestamp_seconds"): T0 - 86_400,  # exit 1: the earlier success stays
    }  # fmt: skip
    assert samples == expected
    assert report["bytes_written"] == 190
    assert (report["exit_code"], counts["copied"], counts["failed"], counts["up_to_date"]) == (1, 1, 1, 1)
    assert stat.S_IMODE(os.stat(tmp_path / "imgmig.prom").st_mode) == 0o644


def test_every_metric_has_help_and_type(tmp_path: Path) -> None:
    """Every family has a HELP text and a TYPE line; counters are exposed as *_total, with no _created series."""
    clock = [1000.0]
    metrics = MetricsFile(tmp_path / "m.prom", "nightly", source_region="KR1", clock=lambda: clock[0])
    metrics.write(summary(clock, metrics), final=True, last_success=None, requests={("list", "KR1"): 1})
    text = (tmp_path / "m.prom").read_text()
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"# HELP {exposed} " in text
        assert f"# TYPE {exposed} {family.type}\n" in text
        assert all(s.name == exposed for s in family.samples)
    assert "_created" not in text


def test_running_file(tmp_path: Path) -> None:
    """While running: in progress 1, duration so far, the previous success; no exit code, end time or out-of-sync."""
    clock = [500.0]
    metrics = MetricsFile(tmp_path / "m.prom", "nightly", source_region="KR1", clock=lambda: clock[0])
    s = RunSummary(job="nightly", run_id="r2", started_at=T0, started=500.0)
    s.reporter(metrics).emit(BytesWritten("a", "KR2", 7))
    clock[0] = 530.0
    metrics.write(s, final=False, last_success=T0 - 10)
    samples = parse(tmp_path / "m.prom")
    assert samples[key("imgmig_run_in_progress")] == 1
    assert samples[key("imgmig_run_duration_seconds")] == 30.0
    assert samples[key("imgmig_bytes_written_total", region="KR2")] == 7
    assert samples[key("imgmig_last_success_timestamp_seconds")] == T0 - 10
    names = {name for name, _ in samples}
    assert not names & {"imgmig_exit_code", "imgmig_last_run_timestamp_seconds", "imgmig_copies_out_of_sync",
                        "imgmig_requests_total"}  # fmt: skip


def test_successful_final_file_is_the_last_success(tmp_path: Path) -> None:
    """A final file with exit code 0 reports this run's end as the last success, newer than the journal's."""
    metrics = MetricsFile(tmp_path / "m.prom", "nightly", source_region="KR1")
    s = RunSummary(job="nightly", run_id="r3", started_at=T0, started=0.0, plan=Plan((), ("KR2",)))
    s.finish(lambda: 12.0)
    metrics.write(s, final=True, last_success=T0 - 3600)
    samples = parse(tmp_path / "m.prom")
    assert samples[key("imgmig_exit_code")] == 0
    assert samples[key("imgmig_last_success_timestamp_seconds")] == T0 + 12.0
    assert samples[key("imgmig_copies_out_of_sync")] == 0
    assert samples[key("imgmig_bytes_written_total", region="KR2")] == 0


def test_shard_label_on_every_sample(tmp_path: Path) -> None:
    """With a shard every sample carries shard=<name> next to imgmig_job."""
    clock = [1000.0]
    metrics = MetricsFile(tmp_path / "m.prom", "nightly", "shard-3", source_region="KR1", clock=lambda: clock[0])
    metrics.write(summary(clock, metrics), final=True, last_success=T0, requests={("get", "KR2"): 5})
    samples = parse(tmp_path / "m.prom")
    assert len(samples) > 15
    for _, labels in samples:
        assert {("imgmig_job", "nightly"), ("shard", "shard-3")} <= labels


def test_no_shard_label_without_shard(tmp_path: Path) -> None:
    """Without a shard no sample has a shard label."""
    metrics = MetricsFile(tmp_path / "m.prom", "nightly", source_region="KR1")
    metrics.write(RunSummary(job="nightly", run_id="r"), final=False, last_success=None)
    assert all("shard" not in dict(labels) for _, labels in parse(tmp_path / "m.prom"))


def test_replacement_is_atomic_under_a_reader(tmp_path: Path) -> None:
    """A reader in a tight loop during 200 growing rewrites only ever sees complete files."""
    path = tmp_path / "imgmig.prom"
    metrics = MetricsFile(path, "nightly", source_region="KR1")
    s = RunSummary(job="nightly", run_id="r", started_at=T0)
    metrics.write(s, final=False, last_success=T0)
    expected_names = {name for name, _ in parse(path)} | {"imgmig_bytes_written_total"}
    done, errors, reads = threading.Event(), [], [0]

    def reader() -> None:
        while reads[0] < 1_000_000:  # bounded; normally ends when the writer is done
            stop = done.is_set()
            try:
                samples = parse(path)
                names = {name for name, _ in samples} | {"imgmig_bytes_written_total"}
                regions = sum(1 for name, _ in samples if name == "imgmig_bytes_written_total")
                # write i has i regions and retries = i: a file cut anywhere breaks one of these
                assert names == expected_names, names ^ expected_names
                assert regions == samples[key("imgmig_retries_total")]
            except Exception as exc:
                errors.append(repr(exc))
            reads[0] += 1
            time.sleep(0)  # hand the GIL over at once: otherwise the writer waits a switch interval per syscall
            if stop:
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 201):
            metrics.emit(BytesWritten("img", f"region-{i:03d}-{'x' * 40}", i))
            s.retries = i
            metrics.write(s, final=False, last_success=T0)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert not errors, errors[:3]
    assert reads[0] > 200
    assert parse(path)[key("imgmig_retries_total")] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgmig.prom"]  # no temporary file left


def test_failed_replace_keeps_nothing_behind(tmp_path: Path) -> None:
    """When the rename fails the error surfaces and no temporary file is left in the directory."""
    (tmp_path / "m.prom").mkdir()  # os.replace cannot put a file over a directory
    metrics = MetricsFile(tmp_path / "m.prom", "nightly", source_region="KR1")
    with pytest.raises(IsADirectoryError):
        metrics.write(RunSummary(job="nightly", run_id="r"), final=False, last_success=None)
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]


def test_last_success_picks_the_newest_exit_zero() -> None:
    """last_success is the finish time of the newest run that finished with exit code 0, None if none did."""
    runs = [
        RunEntry("r1", 1, 100.0, finished_at=150.0, outcome="ok", exit_code=0),
        RunEntry("r2", 2, 200.0, finished_at=400.0, outcome="ok", exit_code=0),
        RunEntry("r3", 3, 300.0, finished_at=350.0, outcome="ok", exit_code=0),
        RunEntry("r4", 4, 500.0, finished_at=600.0, outcome="failed", exit_code=1),
        RunEntry("r5", 5, 700.0, finished_at=750.0, outcome="parked", exit_code=10),
        RunEntry("r6", 6, 800.0),  # still running (or killed): not finished
    ]
    assert last_success(runs) == 400.0
    assert last_success(runs[3:]) is None
    assert last_success([]) is None


async def test_real_run_bytes_written_match_the_emulator(emulator: Emulator, tmp_path: Path) -> None:
    """Through run_job on the emulator: bytes written per region equal the bytes the emulator stored."""
    tenant = uuid.uuid4().hex
    sizes = [3 * MiB + 11, 64 * 1024, 1, 0]
    sources = [add(emulator, tenant, f"img-{i}", size=size) for i, size in enumerate(sizes)]
    spec = job(emulator, tmp_path, tenant)
    path = tmp_path / "textfile" / "imgmig.prom"
    path.parent.mkdir()
    metrics = MetricsFile(path, spec.name, source_region=spec.source.region)
    s = await run_job(spec, RunControls(signals=(), reporter=metrics))
    previous = last_success(Journal.read(spec.run.journal_dir, spec.name).runs)
    metrics.write(s, final=True, last_success=previous)
    samples = parse(path)
    assert s.exit_code == 0
    for region in ("KR2", "JP1"):
        stored = copies(emulator, region, tenant)
        assert len(stored) == len(sources)
        assert samples[key("imgmig_bytes_written_total", imgmig_job=spec.name, region=region)] == sum(
            r.size or 0 for r in stored.values()
        )
    assert samples[key("imgmig_bytes_read_total", imgmig_job=spec.name, region="KR1")] == sum(sizes) == s.bytes_read
    assert samples[key("imgmig_images", imgmig_job=spec.name, outcome="copied")] == 2 * len(sources)
    assert samples[key("imgmig_copies_out_of_sync", imgmig_job=spec.name)] == 0
    assert previous is not None
    assert samples[key("imgmig_last_success_timestamp_seconds", imgmig_job=spec.name)] >= previous


def test_run_cli_writes_the_metrics_file_and_a_kill_leaves_the_last_complete_one(tmp_path: Path) -> None:
    """`imgmig run --metrics-file` writes a file whose values equal the --report's (bytes per target region,
    outcomes, exit code); a run killed with SIGKILL mid-transfer leaves the file it wrote at its start,
    complete and parseable."""
    from prometheus_client.parser import text_string_to_metric_families

    from .jobsetup import make_source, new_tenants, run_cli, write_job
    from .procs import emulator_process

    def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(path.read_text()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    with emulator_process("--regions", "KR1,KR2,JP1") as emu:
        tenant, partner, other = new_tenants(3)
        make_source(emu.identity_url, tenant, partner=partner, other=other)
        job = write_job(tmp_path / "job.toml", name="prom", identity_url=emu.identity_url, tenant=tenant,
                        journal=tmp_path / "state")  # fmt: skip
        prom = tmp_path / "imgmig.prom"
        killed = run_cli("run", str(job), "--no-progress", "--metrics-file", str(prom),
                         env={"IMGMIG_FAILPOINTS": "uploading@3"})  # fmt: skip
        assert killed.returncode == -9
        running = samples(prom)  # the file of the run's start: complete, still marked in progress
        assert running[("imgmig_run_in_progress", (("imgmig_job", "prom"),))] == 1
        done = run_cli("run", str(job), "--no-progress", "--metrics-file", str(prom), "--report",
                       str(tmp_path / "r.json"))  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads((tmp_path / "r.json").read_text())
        final = samples(prom)
        label = (("imgmig_job", "prom"),)
        assert final[("imgmig_exit_code", label)] == report["exit_code"] == 0
        assert final[("imgmig_run_in_progress", label)] == 0
        for outcome in ("copied", "up_to_date", "failed"):
            key = ("imgmig_images", (("imgmig_job", "prom"), ("outcome", outcome)))
            assert final[key] == report["counts"][outcome]
        written = {dict(k[1])["region"]: v for k, v in final.items() if k[0] == "imgmig_bytes_written_total"}
        by_region: dict[str, int] = {}
        for step in report["steps"]:
            by_region[step["target"]] = by_region.get(step["target"], 0) + step["bytes"]
        assert written == by_region
        assert final[("imgmig_last_success_timestamp_seconds", label)] >= report["started_at"]
        requests = {(dict(k[1])["region"], dict(k[1])["kind"]): v for k, v in final.items()
                    if k[0] == "imgmig_requests_total"}  # fmt: skip
        assert requests == {(r, k): n for r, kinds in report["requests"].items() for k, n in kinds.items()}
        assert requests[("KR2", "upload")] >= 1
