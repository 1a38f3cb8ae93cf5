"""The command line as cron sees it: exit codes, one-paragraph errors, lock, signals, status, --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main

from .chaos import set_faults, state
from .jobsetup import PASSWORD, PASSWORD_ENV, check_invariants, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process, eventually, stop_process, wait_until

TARGETS = ("KR2", "JP1")
GOOD = """
name = "cli-job"
[auth.a]
identity_url = "http://127.0.0.1:9/v2.0"
tenant_id = "t"
username = "u"
password_env = "IMGMIG_TEST_PASSWORD"
[source]
auth = "a"
region = "KR1"
[[targets]]
auth = "a"
region = "KR2"
"""


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One `imgmig emulate` for the module."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BROKEN = [
    ("missing-name", _replace(GOOD, 'name = "cli-job"', ""), "name"),
    ("missing-source", _replace(GOOD, '[source]\nauth = "a"\nregion = "KR1"', ""), "source"),
    ("missing-region", _replace(GOOD, 'region = "KR2"', ""), "targets[0].region"),
    ("wrong-type", GOOD + "[transfer]\nimages_in_flight = \"four\"\n", "transfer.images_in_flight"),
    ("unknown-top-key", GOOD + "colour = \"blue\"\n", "colour"),
    ("unknown-nested-key", GOOD + "[transfer]\nchunksize = \"8MiB\"\n", "transfer.chunksize"),
    ("bad-glob", GOOD + "[select]\nnames = [\"golden-[\"]\n", "select.names"),
    ("bad-size", GOOD + "[transfer]\nchunk_size = \"8 parsecs\"\n", "transfer.chunk_size"),
    ("bad-rate", GOOD + "[transfer]\nbandwidth = \"fast\"\n", "transfer.bandwidth"),
    ("bad-duration", GOOD + "[run]\nmax_runtime = \"soon\"\n", "run.max_runtime"),
    ("password-env-unset", _replace(GOOD, "IMGMIG_TEST_PASSWORD", "IMGMIG_NOT_SET_ANYWHERE"), "auth.a.password_env"),
    ("unknown-profile", _replace(GOOD, '[[targets]]\nauth = "a"', '[[targets]]\nauth = "dst"'), "targets[0].auth"),
    ("duplicate-targets", GOOD + '[[targets]]\nauth = "a"\nregion = "KR2"\n', "targets[1]"),
    ("source-as-target", _replace(GOOD, 'region = "KR2"', 'region = "KR1"'), "targets[0]"),
    ("public-visibility", GOOD + "[select]\nvisibility = [\"public\"]\n", "select.visibility"),
    ("toml-syntax", GOOD + "[transfer\n", "line"),
    ("negative-retries", GOOD + "[transfer]\nretries = -1\n", "transfer.retries"),
    ("size-range", GOOD + "[select]\nsize_min = \"2GiB\"\nsize_max = \"1GiB\"\n", "select.size_min"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key"), [pytest.param(t, k, id=i) for i, t, k in BROKEN])
@pytest.mark.parametrize("command", ["run", "plan", "verify"])
def test_broken_job_files_exit_2_with_one_paragraph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str, key: str,
    command: str,
) -> None:  # fmt: skip
    """Every broken job file gives exit 2 and a one-paragraph message naming the key; nothing else runs."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.toml"
    job.write_text(text)
    assert main([command, str(job)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgmig: error: job file")
    assert err.count("\n") == 1, err
    assert key in err
    assert "Traceback" not in err
    assert not (tmp_path / "state").exists()  # nothing was started, nothing lost


def test_missing_job_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A job file that does not exist is a usage error (exit 2), not a traceback."""
    assert main(["status", "/nonexistent/job.toml"]) == 2
    assert "job.toml" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "plan", "status", "verify", "emulate"])
def test_help_is_complete(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each subcommand's --help describes it and its options, and run's lists every exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: imgmig {command}" in out
    if command == "run":
        for option in (
            "--dry-run",
            "--max-runtime",
            "--log-format",
            "--no-progress",
            "--report",
            "--spool-dir",
        ):
            assert option in out
        for code in ("0", "1", "2", "3", "4", "10", "130", "143"):
            assert f" {code} " in out.replace("/", " ")


def test_bad_credentials_exit_4(emu: EmulatorProcess, tmp_path: Path) -> None:
    """Credentials the identity service refuses give exit 4 and name the user, never the password."""
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [{"username": "owner", "password": "right", "tenants": []}]}))
    with emulator_process("--regions", "KR1,KR2", "--users", str(users)) as strict:
        job = write_job(tmp_path / "job.toml", name="auth", identity_url=strict.identity_url, tenant="t" * 32,
                        journal=tmp_path / "state", targets=("KR2",))  # fmt: skip
        result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 4, result.stderr
    assert "refused user 'owner'" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())  # cron still gets its report
    assert (report["outcome"], report["exit_code"]) == ("fatal", 4)
    assert PASSWORD not in result.stderr + result.stdout


def test_lock_held_exits_3_naming_the_holder(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A second run of a job that is running exits 3 and names the holder's PID."""
    tenant = new_tenants(1)[0]
    job = write_job(tmp_path / "job.toml", name="locked", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", extra="[select]\nallow_empty = true\n")  # fmt: skip
    code = f"from pipeline.state.lock import JobLock; import pathlib, time; JobLock(pathlib.Path({str(tmp_path / 'state')!r}), 'locked').acquire(); print('held', flush=True); time.sleep(60)"  # noqa: E501
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("run", str(job), "--no-progress")
        assert result.returncode == 3
        assert f"PID {holder.pid}" in result.stderr
    finally:
        stop_process(holder, signal.SIGKILL)
        if holder.stdout is not None:
            holder.stdout.close()
    assert run_cli("run", str(job), "--no-progress").returncode == 0  # the dead holder's lock is taken over


def test_sigterm_exits_143_and_the_next_run_completes(emu: EmulatorProcess, tmp_path: Path) -> None:
    """SIGTERM mid-transfer: exit 143 with the state saved; the next run completes without duplicates."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="sig", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    job.write_text(job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "2MiB/s"'))
    env = {**os.environ, PASSWORD_ENV: PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    aborted_before = state(emu.admin)["stats"]["JP1"]["uploads_aborted"]
    set_faults(emu.admin, "JP1", {"bandwidth": 256 * 1024})  # an upload to JP1 lasts seconds
    try:
        # the signal lands mid-transfer: once JP1 reports an upload in progress that has bytes already
        wait_until(lambda: state(emu.admin)["stats"]["JP1"]["active_upload_bytes"] > 0, proc, "an upload under way")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc, signal.SIGKILL)
        set_faults(emu.admin, "JP1", {})
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in out
    # the targets saw uploads broken off by the interruption (they notice the client gone a moment later)
    eventually(lambda: state(emu.admin)["stats"]["JP1"]["uploads_aborted"] > aborted_before,
               "JP1 to see the interrupted upload end")  # fmt: skip
    status = json.loads(run_cli("status", str(job), "--json").stdout)
    assert status["last_run"]["outcome"] == "interrupted"
    assert status["last_run"]["exit_code"] == 143
    resumed = run_cli("run", str(job), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_invariants(emu.admin, "sig", sources, TARGETS, tenant=tenant)


def test_status_json_is_the_stable_view(emu: EmulatorProcess, tmp_path: Path) -> None:
    """status --json has the documented keys, per image x target state, and needs no password."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="stat", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    assert run_cli("run", str(job), "--no-progress").returncode == 0
    result = run_cli("status", str(job), "--json", env={PASSWORD_ENV: ""})
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert {"format", "job", "journal_dir", "seq", "running", "last_run", "runs", "counts", "images"} <= set(view)
    assert view["running"] is None
    assert view["last_run"]["outcome"] == "ok"
    assert view["counts"] == {"done": len(sources) * len(TARGETS)}
    image = next(i for i in view["images"] if i["name"] == "golden-a")
    target = image["targets"]["KR2"]
    assert target["state"] == "done"
    assert target["evidence"]["computed"]["md5"] == image["checksum"]
    assert target["evidence"]["reported"]["checksum"] == image["checksum"]
    table = run_cli("status", str(job))
    assert "golden-a" in table.stdout


def test_plan_json_and_dry_run_change_nothing(emu: EmulatorProcess, tmp_path: Path) -> None:
    """plan --json lists the action and bytes per image x target; run --dry-run creates nothing."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="plan", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    plan = json.loads(run_cli("plan", str(job), "--json").stdout)
    assert plan["counts"]["copy"] == len(sources) * len(TARGETS)
    assert plan["bytes"] == sum(s.size for s in sources) * len(TARGETS)
    step = plan["images"][0]["steps"][0]
    assert {"target", "action", "bytes"} <= set(step)
    dry = run_cli("run", str(job), "--dry-run")
    assert dry.returncode == 0
    assert "dry run" in dry.stdout
    assert json.loads(run_cli("plan", str(job), "--json").stdout)["counts"]["copy"] == len(sources) * len(TARGETS)


def test_unreachable_region_exits_1_and_others_complete(emu: EmulatorProcess, tmp_path: Path) -> None:
    """When one target region cannot be reached, the other completes, the job exits 1 and names it."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    # a fixed-endpoint profile pointing at a closed port plays the unreachable region
    job = write_job(tmp_path / "job.toml", name="down", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", targets=("KR2",))  # fmt: skip
    job.write_text(job.read_text() + '\n[auth.dead]\nendpoint = "http://127.0.0.1:9"\ntoken_env = "DEAD_TOKEN"\n'
                   '\n[[targets]]\nauth = "dead"\nregion = "XX1"\n')  # fmt: skip
    result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r.json"),
                     env={"DEAD_TOKEN": "tok-123456"})  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "UNAVAILABLE XX1" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert "XX1" in report["unavailable_targets"]
    assert report["counts"]["copied"] == len(sources)
    check_invariants(emu.admin, "down", sources, ("KR2",), tenant=tenant)


def test_max_runtime_parks_and_exits_10(emu: EmulatorProcess, tmp_path: Path) -> None:
    """--max-runtime stops the run (exit 10, parked images reported); the next run completes the job."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="park", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    job.write_text(job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "1MiB/s"'))
    parked = run_cli("run", str(job), "--no-progress", "--max-runtime", "2s", "--report", str(tmp_path / "r.json"))
    assert parked.returncode == 10, parked.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["outcome"] == "parked"
    assert report["counts"]["parked_images"] >= 1
    assert "max_runtime reached" in parked.stdout
    resumed = run_cli("run", str(job), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_invariants(emu.admin, "park", sources, TARGETS, tenant=tenant)


def test_logs_are_json_lines_with_one_step_line_per_image_and_target(emu: EmulatorProcess, tmp_path: Path) -> None:
    """Without a TTY, stderr is JSON lines, with exactly one `step` line per image x target."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="logs", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    result = run_cli("run", str(job))
    assert result.returncode == 0
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == len(sources) * len(TARGETS)
    assert {(e["image_id"], e["target"]) for e in steps} == {(s.id, t) for s in sources for t in TARGETS}
    assert all(e["outcome"] == "copied" and "timestamp" in e and e["level"] == "info" for e in steps)


@pytest.mark.parametrize("size", [(40, 120), (0, 0)], ids=["sized-terminal", "bare-pty"])
def test_progress_bars_on_a_tty(emu: EmulatorProcess, tmp_path: Path, size: tuple[int, int]) -> None:
    """On a terminal, run shows a total bar and per-image bars, and console (not JSON) log lines."""
    import fcntl
    import pty
    import struct
    import termios

    tenant, partner, other = new_tenants(3)
    make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="tty", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {PASSWORD_ENV: PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job)], stdin=child_fd, stdout=child_fd,
                            stderr=child_fd, env=env)  # fmt: skip
    os.close(child_fd)
    chunks = []
    try:
        while True:
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(60) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        os.close(main_fd)
    screen = b"".join(chunks).decode(errors="replace")
    assert "total:" in screen
    assert "golden-a" in screen  # a per-image bar (and its step line)
    assert "%|" in screen  # tqdm's bar
    assert '"event": "step"' not in screen  # console logs on a TTY, not JSON
    assert "job tty: ok (exit 0)" in screen
