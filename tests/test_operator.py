"""An operator's first week: every mistake a user can make gets one paragraph that names the key, a distinct exit
code and no traceback, in every subcommand; an empty selection is not green; an identity service that cannot be
reached is named and logged attempt by attempt; failed runs keep their reason; the journal does not depend on the
working directory. Against an ``imgmig emulate`` process, counted at its admin view where it matters."""

from __future__ import annotations

import json
import re
import socket
import threading
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos import state
from .jobsetup import make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

ONE = [(1 << 20, {"name": "golden-one", "tags": ["dr"]}, {})]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One ``imgmig emulate`` process for the module; each test uses its own tenant."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def _job(emu: EmulatorProcess, tmp_path: Path, *, name: str = "op", targets: tuple[str, ...] = ("KR2", "JP1"),
         extra: str = "", journal: Path | None = None) -> Path:  # fmt: skip
    tenant = new_tenants(1)[0]
    make_source(emu.identity_url, tenant, partner="p", other="o", specs=ONE)
    return write_job(tmp_path / "job.toml", name=name, identity_url=emu.identity_url, tenant=tenant,
                     journal=journal or tmp_path / "state", targets=targets, extra=extra)  # fmt: skip


def _creates(emu: EmulatorProcess) -> dict[str, int]:
    """Image creates each region has received, counted by the emulator."""
    return {region: stats["requests"].get("create", 0) for region, stats in state(emu.admin)["stats"].items()}


def _set(path: Path, section: str, line: str) -> None:
    """Put ``line`` into ``[section]`` of the job file (replacing a key of the same name)."""
    key = line.split("=")[0].strip()
    lines = path.read_text().splitlines()
    if f"[{section}]" not in lines:
        lines.append(f"[{section}]")
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [entry for entry in lines[start + 1 : end] if entry.split("=")[0].strip() != key]
    path.write_text("\n".join([*lines[: start + 1], *body, line, *lines[end:]]) + "\n")


#: Broken paths: the section and key, and the value ({file} is a plain file; /sys refuses every write, root's too).
BROKEN_PATHS = {
    "journal-is-a-file": ("run", "journal_dir", "{file}"),
    "journal-under-a-file": ("run", "journal_dir", "{file}/sub"),
    "spool-unwritable": ("transfer", "spool_dir", "/sys/imgmig-spool"),
    "metrics-unwritable": ("run", "metrics_file", "/sys/imgmig/imgmig.prom"),
    "metrics-under-a-file": ("run", "metrics_file", "{file}/imgmig.prom"),
}


def _broken_path(case: str, tmp_path: Path, job: Path) -> str:
    """Break ``job`` as ``BROKEN_PATHS[case]`` says; the dotted key the error must name."""
    section, key, value = BROKEN_PATHS[case]
    (tmp_path / "a-file").write_text("not a directory")
    _set(job, section, f'{key} = "{value.format(file=tmp_path / "a-file")}"')
    return f"{section}.{key}"


def _wrong_target_region(tmp_path: Path, job: Path) -> str:
    job.write_text(job.read_text().replace('region = "JP1"', 'region = "JP2"'))
    return "'JP2'"


# which subcommands meet each mistake: status and report never write a spool or metrics file
CASES = [(name, command) for name in BROKEN_PATHS for command in ("run", "plan", "check", "verify", "status", "report")
         if command in ("run", "check") or name.startswith("journal")]  # fmt: skip
CASES += [("wrong-target-region", command) for command in ("run", "plan", "check", "verify")]


@pytest.mark.parametrize(("case", "command"), CASES, ids=[f"{c}-{cmd}" for c, cmd in CASES])
def test_every_user_mistake_is_one_paragraph_and_exit_2(emu: EmulatorProcess, tmp_path: Path, case: str,
                                                         command: str) -> None:  # fmt: skip
    """A table of broken jobs against every subcommand: exit 2, the message names the key (or the region), one
    paragraph, no line of a traceback, and nothing was created in any target."""
    job = _job(emu, tmp_path)
    key = _wrong_target_region(tmp_path, job) if case == "wrong-target-region" else _broken_path(case, tmp_path, job)
    before = _creates(emu)
    args = [command, str(job)] + (["--html", str(tmp_path / "r.html")] if command == "report" else [])
    quiet = ["--log-level", "error"] if command not in ("status", "report") else []  # they log nothing
    result = run_cli(*args, *quiet)
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("imgmig: error:")]
    assert len(errors) == 1, result.stderr
    assert key in errors[0]
    after = _creates(emu)
    assert after == before


def _closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed once the block ends


def _identity_unreachable(tmp_path: Path, job: Path) -> str:
    url = f"http://127.0.0.1:{_closed_port()}/v2.0"
    job.write_text(re.sub(r'identity_url = "[^"]*"', f'identity_url = "{url}"', job.read_text()))
    _set(job, "transfer", "retries = 1")
    return f"auth profile 'main': the identity service ({url}/tokens)"


def _image_endpoint_unreachable(tmp_path: Path, job: Path) -> str:
    """JP1 through a fixed endpoint + token profile whose endpoint refuses connections; KR2 stays reachable."""
    url = f"http://127.0.0.1:{_closed_port()}"
    text = job.read_text().replace('auth = "main"\nregion = "JP1"', 'auth = "far"\nregion = "JP1"')
    job.write_text(f'{text}[auth.far]\nendpoint = "{url}"\ntoken_env = "IMGMIG_TEST_TOKEN"\n')
    _set(job, "transfer", "retries = 1")
    return url


UNREACHABLE = {"identity-unreachable": _identity_unreachable, "image-endpoint-unreachable": _image_endpoint_unreachable}
FAULTS = [(name, command) for name in UNREACHABLE for command in ("run", "plan", "check", "verify")]


@pytest.mark.parametrize(("case", "command"), FAULTS, ids=[f"{c}-{cmd}" for c, cmd in FAULTS])
def test_an_unreachable_endpoint_is_exit_1_and_named(emu: EmulatorProcess, tmp_path: Path, case: str,
                                                      command: str) -> None:  # fmt: skip
    """A run-time fault, not a mistake in the job: every command that talks to the cloud exits 1, says which
    endpoint (the profile and the URL) could not be reached, and prints no line of a traceback. The failed
    attempts were logged as they happened."""
    job = _job(emu, tmp_path)
    named = UNREACHABLE[case](tmp_path, job)
    result = run_cli(command, str(job), "--log-format", "json", env={"IMGMIG_TEST_TOKEN": "t"})
    assert result.returncode == 1, (result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert named in result.stdout + result.stderr
    if command != "check":  # check reports the attempt in its table, not as a log line
        logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        event, profile = {"identity-unreachable": ("identity_attempt_failed", "main"),
                          "image-endpoint-unreachable": ("request_attempt_failed", "far")}[case]  # fmt: skip
        attempts = [e for e in logged if e.get("event") == event]
        assert attempts, result.stderr[-2000:]
        assert {(e["profile"], e["attempt"]) for e in attempts} == {(profile, "1 of 2")}


def test_status_and_report_read_no_cloud(emu: EmulatorProcess, tmp_path: Path) -> None:
    """status and report read only the journal: an unreachable identity service changes neither."""
    job = _job(emu, tmp_path)
    assert run_cli("run", str(job), "--no-progress").returncode == 0
    _identity_unreachable(tmp_path, job)
    assert run_cli("status", str(job)).returncode == 0
    assert run_cli("report", str(job), "--html", str(tmp_path / "r.html")).returncode == 0
    assert "golden-one" in (tmp_path / "r.html").read_text()


def test_a_failed_run_keeps_its_reason(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A run that stops on a wrong target region journals why: status (which reads no cloud, exit 0) shows the
    error, and so does the HTML report of that run (--run); report without --run shows the last run that reached
    its plan, the good one before it."""
    job = _job(emu, tmp_path)
    assert run_cli("run", str(job), "--no-progress").returncode == 0
    _wrong_target_region(tmp_path, job)
    assert run_cli("run", str(job), "--no-progress").returncode == 2
    status = run_cli("status", str(job), "--json")
    assert status.returncode == 0, status.stderr
    good, fatal = json.loads(status.stdout)["runs"]
    assert (good["outcome"], good["exit_code"], good.get("error")) == ("ok", 0, None)
    assert (fatal["outcome"], fatal["exit_code"]) == ("fatal", 2)
    assert "'JP2'" in fatal["error"]
    assert "'JP2'" in run_cli("status", str(job)).stdout
    html = tmp_path / "r.html"
    assert run_cli("report", str(job), "--html", str(html)).returncode == 0
    assert f"<tr><th>run</th><td>{good['run_id']}</td></tr>" in html.read_text()
    assert run_cli("report", str(job), "--html", str(html), "--run", fatal["run_id"]).returncode == 0
    page = html.read_text()
    assert f"<tr><th>run</th><td>{fatal['run_id']}</td></tr>" in page
    assert "<tr><th>error</th><td>" in page
    assert "JP2" in page.split("<tr><th>error</th><td>")[1].split("</td>")[0]


def test_an_empty_selection_fails_and_allow_empty_opts_out(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A tag in the wrong case matches nothing: plan and run exit 1 with "selection matched no image in KR1", the
    filter, and the near miss ('dr' differs only by case); nothing is created. With allow_empty the run exits 0,
    and its metrics say how many images the selection matched (0)."""
    job = _job(emu, tmp_path, extra='[select]\ntags = ["DR"]\n')
    before = _creates(emu)
    prom = tmp_path / "m.prom"
    for command in (["plan"], ["run", "--metrics-file", str(prom)]):
        result = run_cli(*command, str(job), "--log-level", "error")
        assert result.returncode == 1, (command, result.stderr[-2000:])
        assert "selection matched no image in KR1" in result.stderr
        assert "tags ['DR']" in result.stderr
        assert "'dr' differs only by case" in result.stderr
        assert "Traceback" not in result.stderr
    assert _creates(emu) == before
    failed = prom.read_text()  # the failed run's metrics: the gauge an alert can watch
    assert 'imgmig_selected_images{imgmig_job="op"} 0.0' in failed
    assert 'imgmig_exit_code{imgmig_job="op"} 1.0' in failed
    _set(job, "select", "allow_empty = true")
    allowed = run_cli("run", str(job), "--no-progress", "--metrics-file", str(prom))
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert 'imgmig_selected_images{imgmig_job="op"} 0.0' in prom.read_text()


def test_an_unreachable_identity_service_is_named_and_logged(tmp_path: Path) -> None:
    """No identity service at the URL (connection refused): plan exits 1 with one paragraph that names the profile
    and the URL; each failed attempt was logged as it happened (attempt n of N, with the cause); check says
    UNREACHABLE, not REFUSED."""
    port = _closed_port()
    job = write_job(tmp_path / "job.toml", name="nowhere", identity_url=f"http://127.0.0.1:{port}/v2.0",
                    tenant=uuid.uuid4().hex, journal=tmp_path / "state")  # fmt: skip
    _set(job, "transfer", "retries = 2")  # three attempts: two waits, both logged
    result = run_cli("plan", str(job), "--log-format", "json")
    assert result.returncode == 1, result.stderr[-2000:]
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    attempts = [e for e in logged if e.get("event") == "identity_attempt_failed"]
    assert [e["attempt"] for e in attempts] == ["1 of 3", "2 of 3"]
    assert all(e["profile"] == "main" and e["url"].endswith(f":{port}/v2.0/tokens") for e in attempts)
    # with --log-format json the error is a JSON line too: the event "error", its message and exit code
    fatal = next(e for e in logged if e.get("event") == "error")
    assert fatal["exit_code"] == 1
    assert fatal["level"] == "error"
    assert fatal["job"] == tomllib.loads(job.read_text())["name"]
    error = fatal["error"]
    assert "auth profile 'main'" in error
    assert f"http://127.0.0.1:{port}/v2.0/tokens" in error
    assert "Traceback" not in result.stderr
    check = run_cli("check", str(job))
    assert check.returncode == 1
    assert "UNREACHABLE" in check.stdout
    assert "REFUSED" not in check.stdout


@pytest.mark.slow
def test_a_silent_identity_service_ends_within_the_token_deadline(tmp_path: Path) -> None:
    """An identity service that accepts connections and never answers (read_timeout is 2 minutes): the command
    does not wait out the read timeout times the retries; it gives up at the token deadline (55 s) with a message
    that says so and names the profile and the URL. The silent server counts the connection it accepted."""
    accepted: list[socket.socket] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        job = write_job(tmp_path / "job.toml", name="silent",
                        identity_url=f"http://127.0.0.1:{server.getsockname()[1]}/v2.0", tenant=uuid.uuid4().hex,
                        journal=tmp_path / "state")  # fmt: skip
        _set(job, "transfer", 'read_timeout = "2m"')
        result = run_cli("plan", str(job), timeout=120)
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()
    assert result.returncode == 1, result.stderr[-2000:]
    assert "gave no token within 55 s" in result.stderr
    assert "auth profile 'main'" in result.stderr
    assert len(accepted) == 1  # one attempt, cut at the deadline, not retried in a loop


def test_the_journal_is_the_same_from_any_working_directory(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A job with the default journal_dir, run from one directory, shows its runs from any other (cd /): the
    journal lives next to the job file, not in the working directory."""
    job = _job(emu, tmp_path)
    text = "\n".join(line for line in job.read_text().splitlines() if not line.startswith("journal_dir"))
    job.write_text(text + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli("run", str(job), "--no-progress", cwd=elsewhere).returncode == 0
    assert (tmp_path / "state" / "op").is_dir()
    status = run_cli("status", str(job), "--json", cwd=Path("/"))
    assert status.returncode == 0, status.stderr
    assert [r["exit_code"] for r in json.loads(status.stdout)["runs"]] == [0]


def test_a_journal_at_the_old_place_is_named_with_the_move(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A journal an older imgmig kept relative to the working directory is named in a warning, with the one command
    that moves it to where the job file's directory now puts it."""
    (tmp_path / "jobs").mkdir()
    job = _job(emu, tmp_path / "jobs")
    text = "\n".join(line for line in job.read_text().splitlines() if not line.startswith("journal_dir"))
    job.write_text(text + "\n")
    old = tmp_path / "cwd"
    old.mkdir()
    assert run_cli("run", str(job), "--no-progress").returncode == 0
    (job.parent / "state").rename(old / "state")  # where it would be, had it been relative to cwd
    result = run_cli("status", str(job), cwd=old)
    assert f"mv {old / 'state' / 'op'} {job.parent / 'state' / 'op'}" in result.stderr


def test_plan_exits_1_when_the_run_would(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A target that requires hw_firmware_type, which the source does not carry: plan and run --dry-run show the
    step blocked and exit 1, as run would; nothing is created."""
    tenant = new_tenants(1)[0]
    make_source(emu.identity_url, tenant, partner="p", other="o",
                specs=[(1 << 16, {"name": "no-firmware", "os_type": "linux"}, {})])  # fmt: skip
    job = write_job(tmp_path / "job.toml", name="blocked", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", targets=("JP1",), extra='[[targets]]\nauth = "main"\n'
                    'region = "KR2"\nrequired_properties = ["os_type", "hw_firmware_type"]\n')  # fmt: skip
    before = _creates(emu)
    for command in (["plan"], ["run", "--dry-run"]):
        result = run_cli(*command, str(job))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "blocked" in result.stdout
    assert json.loads(run_cli("plan", str(job), "--json").stdout)["exit_code"] == 1
    assert _creates(emu) == before


def test_plan_rows_come_sorted_by_name_then_target(emu: EmulatorProcess, tmp_path: Path) -> None:
    """The plan's table lists images by name (created in another order), each image's targets in order."""
    tenant = new_tenants(1)[0]
    names = ["zeta", "alpha", "미러", "mid"]
    make_source(emu.identity_url, tenant, partner="p", other="o",
                specs=[(1 << 12, {"name": name, "os_type": "linux"}, {}) for name in names])  # fmt: skip
    job = write_job(tmp_path / "job.toml", name="sorted", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", targets=("KR2", "JP1"))  # fmt: skip
    result = run_cli("plan", str(job))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split()[1:3] for line in result.stdout.splitlines()[1:] if line.split()[3:4] == ["copy"]]
    assert rows == [[name, target] for name in sorted(names) for target in sorted(("KR2", "JP1"))]


def test_a_shard_that_owns_nothing_of_a_selection_is_green(emu: EmulatorProcess, tmp_path: Path) -> None:
    """Emptiness is judged before the shard filter: of two shards over one image, the one that owns nothing exits
    0 with an empty plan, and the other copies the image (one create per target, counted at the emulator)."""
    job = _job(emu, tmp_path)
    plans = [json.loads(run_cli("plan", str(job), "--json", "--shard", f"{i}/2").stdout) for i in (0, 1)]
    assert sorted(len(p["images"]) for p in plans) == [0, 1]
    assert [p["exit_code"] for p in plans] == [0, 0]
    before = _creates(emu)
    for i in (0, 1):
        result = run_cli("run", str(job), "--no-progress", "--shard", f"{i}/2")
        assert result.returncode == 0, result.stderr[-2000:]
    after = _creates(emu)
    assert {r: after[r] - before.get(r, 0) for r in after} == {"KR1": 0, "KR2": 1, "JP1": 1}
