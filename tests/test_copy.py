"""``imgmig copy``, the one-line copy, and the JSON log lines a pipeline reads (issue 24), against the emulator in
its own process: profiles from a profiles file and from clouds.yaml (``auth_type: v2password``, NHN's Keystone
v2.0), kill -9 and the same command again, a third that moves nothing (counted at the server), ``--save``, and
every line of a JSON-logged run parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.run.oneoff import copy_job

from .chaos import set_faults, state
from .jobsetup import PASSWORD, PASSWORD_ENV, check_invariants, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

TARGETS = ("KR2", "JP1")
SPECS: list[tuple[int, dict[str, Any], dict[str, str]]] = [
    ((3 << 20) + 5, {"name": "golden-a", "os_distro": "ubuntu", "tags": ["golden"]}, {}),
    (1 << 20, {"name": "golden-b", "os_version": "9"}, {}),
    (1 << 20, {"name": "other-c"}, {}),  # not named: never copied
]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One ``imgmig emulate`` process for the module; each test uses its own tenant and counts deltas."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def home(tmp_path: Path, profiles: dict[str, dict[str, str]] | None = None,
         clouds: dict[str, Any] | None = None) -> dict[str, str]:  # fmt: skip
    """An environment whose HOME, XDG directories, profiles file and clouds.yaml are the test's own."""
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
           "OS_CLIENT_SECURE_FILE": str(tmp_path / "secure.yaml")}  # fmt: skip
    (tmp_path / "home").mkdir(parents=True, exist_ok=True)
    if profiles is not None:
        path = tmp_path / "xdg-config" / "imgmig" / "profiles.toml"  # the default place, found without a variable
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for name, table in profiles.items():
            lines += [f"[auth.{name}]", *(f'{k} = "{v}"' for k, v in table.items())]
        path.write_text("\n".join(lines) + "\n")
    if clouds is not None:
        (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": clouds}))
    return env


def nhn_profile(identity_url: str, tenant: str) -> dict[str, str]:
    return {"identity_url": identity_url, "tenant_id": tenant, "username": "owner", "password_env": PASSWORD_ENV}


def received(emu: EmulatorProcess) -> dict[str, tuple[int, int]]:
    """(uploads started, bytes received) per target region, counted by the emulator."""
    stats = state(emu.admin)["stats"]
    return {r: (stats[r]["uploads_started"], stats[r]["bytes_received"]) for r in TARGETS}


def test_copy_by_name_to_two_regions_resumes_after_kill_9_then_moves_nothing(emu: EmulatorProcess,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    """``imgmig copy --from main:KR1 --to main:KR2,JP1 golden-a 'golden-b*'`` with a profiles file: killed -9 in
    the middle of an upload, the same command again completes with exactly one verified copy of each named image
    per target and nothing else; a third moves 0 bytes (counted at the emulator); ``--save`` writes a job file
    whose ``status`` shows the copy's three runs, and whose ``run`` has nothing to do."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=SPECS)
    env = home(tmp_path, profiles={"main": nhn_profile(emu.identity_url, tenant)})
    command = ["copy", "--from", "main:KR1", "--to", "main:KR2,JP1", "golden-a", "golden-b*", "--no-progress"]

    start = received(emu)
    crashed = run_cli(*command, env={**env, "IMGMIG_FAILPOINTS": "uploading@3"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert received(emu) != start  # the kill came mid-copy: uploads were under way

    again = run_cli(*command, "--json", "--save", str(tmp_path / "copy.toml"), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    name = report["job"]
    assert name.startswith("copy-")
    assert report["exit_code"] == 0
    named = [s for s in sources if s.name != "other-c"]
    check_invariants(emu.admin, name, named, TARGETS, tenant=tenant)  # one verified copy each, nothing extra
    journal = Path(env["XDG_STATE_HOME"]) / "imgmig" / "copy" / name
    assert (journal / "snapshot.json").exists() or (journal / "journal.jsonl").exists()

    before = received(emu)
    third = run_cli(*command, "--json", env=env)
    assert third.returncode == 0, third.stderr[-2000:]
    assert received(emu) == before  # not one upload started, not one byte received
    doc = json.loads(third.stdout)
    assert doc["job"] == name
    assert doc["bytes_written"] == 0
    assert doc["counts"]["up_to_date"] == len(named) * len(TARGETS)

    saved = tomllib.loads((tmp_path / "copy.toml").read_text())
    assert saved["name"] == name
    assert saved["select"] == {"names": ["golden-a", "golden-b*"]}
    assert PASSWORD not in (tmp_path / "copy.toml").read_text()
    status = run_cli("status", str(tmp_path / "copy.toml"), "--json", env=env)
    assert status.returncode == 0, status.stderr
    runs = json.loads(status.stdout)["runs"]
    assert len(runs) == 3
    assert runs[-1]["run_id"] == doc["run_id"]
    rerun = run_cli("run", str(tmp_path / "copy.toml"), "--no-progress", "--report", str(tmp_path / "r.json"),
                    env=env)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["up_to_date"] == len(named) * len(TARGETS)
    assert received(emu) == before


def test_copy_from_a_v2password_cloud_of_clouds_yaml(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A clouds.yaml cloud with ``auth_type: v2password`` (NHN's Keystone v2.0: tenant by ``project_id``, as
    openstacksdk spells it, password in secure.yaml) is the default cloud (``--os-cloud``) and takes its
    ``region_name`` as the source region; the copy lands in two regions, verified, with NHN's required os_type,
    and the tokens were issued to that tenant."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=SPECS[:1])
    cloud = {"auth_type": "v2password", "region_name": "KR1",
             "auth": {"auth_url": emu.identity_url, "username": "owner", "project_id": tenant}}  # fmt: skip
    env = home(tmp_path, clouds={"nhn-kr": cloud})
    (tmp_path / "secure.yaml").write_text(yaml.safe_dump({"clouds": {"nhn-kr": {"auth": {"password": PASSWORD}}}}))
    issued = state(emu.admin)["tokens_issued_by_tenant"].get(tenant, 0)
    result = run_cli("copy", "--os-cloud", "nhn-kr", "--to", ":KR2,JP1", "golden-a", "--no-progress", "--json",
                     env={**env, PASSWORD_ENV: ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check_invariants(emu.admin, json.loads(result.stdout)["job"], sources, TARGETS, tenant=tenant)
    assert state(emu.admin)["tokens_issued_by_tenant"][tenant] > issued
    assert PASSWORD not in result.stdout + result.stderr
    # by tenant name too (Keystone v2.0's tenantName), and a dry run changes nothing
    cloud["auth"] = {"auth_url": emu.identity_url, "username": "owner", "tenant_name": tenant}
    home(tmp_path, clouds={"nhn-kr": cloud})
    before = received(emu)
    dry = run_cli("copy", "--from", "nhn-kr", "--to", "nhn-kr:KR2,JP1", "golden-a", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert " skip " in dry.stdout  # every copy is there already
    assert received(emu) == before


def test_copy_command_line_mistakes_are_one_paragraph_and_exit_2(emu: EmulatorProcess, tmp_path: Path) -> None:
    """An unknown profile, a profile without a region, ids mixed with names, a --save over another file: each
    is one paragraph naming what to write instead, exit 2, and nothing copied."""
    tenant = new_tenants(1)[0]
    env = home(tmp_path, profiles={"main": nhn_profile(emu.identity_url, tenant)}, clouds={})
    (tmp_path / "other.toml").write_text('name = "someone-elses"\n')
    cases = [
        (["--from", "nope:KR1", "--to", "main:KR2", "x"], "neither an [auth.nope]"),
        (["--from", "main", "--to", "main:KR2", "x"], "write --from main:REGION"),
        (["--from", "main:KR1", "--to", "main:", "x"], "name a region after the colon"),
        (["--from", "main:KR1", "--to", "main:KR2", "x", "0d1b2c3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"], "not both"),
        (["--from", "main:KR1", "--to", "main:KR1", "x"], "target is the source"),
        (["--from", "main:KR1", "--to", "main:KR2", "x", "--save", str(tmp_path / "other.toml")], "holds something"),
    ]
    before = received(emu)
    for args, words in cases:
        result = run_cli("copy", *args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # argparse's usage line, then the error
    assert received(emu) == before
    assert (tmp_path / "other.toml").read_text() == 'name = "someone-elses"\n'


def test_the_job_name_is_stable_and_names_the_places(tmp_path: Path) -> None:
    """The same places in another order give the same job (and journal); another target gives another."""
    env = home(tmp_path, profiles={"main": nhn_profile("http://127.0.0.1:9/v2.0", "t1")}, clouds={})
    full = {**env, PASSWORD_ENV: PASSWORD}
    one = copy_job(["a"], source="main:KR1", targets=["main:KR2,JP1"], environ=full)
    two = copy_job(["b*"], source="main:KR1", targets=["main:JP1", "main:KR2"], environ=full)
    three = copy_job(["a"], source="main:KR1", targets=["main:KR2"], environ=full)
    assert one.spec.name == two.spec.name != three.spec.name
    assert one.spec.run.journal_dir == tmp_path / "xdg-state" / "imgmig" / "copy" / one.spec.name
    assert [t.region for t in two.spec.targets] == ["JP1", "KR2"]
    # a cloud is the place clouds.yaml resolves it to, not its name: another tenant under the same name is
    # another job, with its own journal
    names = []
    for tenant in ("t1", "t2"):
        auth = {"auth_url": "http://127.0.0.1:9/v2.0", "username": "u", "password": "p", "tenant_id": tenant}
        cloud = {"auth_type": "v2password", "region_name": "KR1", "auth": auth}
        home(tmp_path, clouds={"c": cloud})
        names.append(copy_job(["a"], source=None, targets=[":KR2"], os_cloud="c", environ=full).spec.name)
    assert names[0] != names[1]


def run_merged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ARGS 2>&1``: one stream, as a log file written by ``>> log 2>&1`` holds it."""
    full_env = {**os.environ, PASSWORD_ENV: PASSWORD, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=full_env, timeout=120, check=False)  # fmt: skip


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Every line the command wrote (stdout and stderr merged), each parsed: a line that is not JSON fails."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, "the command wrote nothing"
    return [json.loads(line) for line in lines]


def test_every_line_of_a_json_logged_run_parses_and_names_its_run(emu: EmulatorProcess, tmp_path: Path) -> None:
    """With ``--log-format json`` and ``2>&1``, every line is JSON: a good run (run_started, one step per image x
    target, the download permission switched on and back, run_finished with numbers as numbers), a run whose
    target fails (exit 1), a job-file error (exit 2) and a usage error (exit 2). The runs' lines all carry job
    and run_id."""
    tenant, partner, other = new_tenants(3)
    specs = [(1 << 20, {"name": "gated", "nhncloud_allow_download": "false"}, {}), SPECS[1]]
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=specs)
    job = write_job(tmp_path / "job.toml", name="json-logs", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", extra="")  # fmt: skip
    job.write_text(job.read_text().replace('region = "KR1"', 'region = "KR1"\nenable_download = true', 1))

    good = run_merged("run", str(job), "--log-format", "json")
    assert good.returncode == 0, good.stdout[-3000:]
    events = json_lines(good)
    assert all(e["job"] == "json-logs" and e["run_id"] == events[0]["run_id"] for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert events[0]["targets"] == list(TARGETS)
    assert kinds.count("step") == len(sources) * len(TARGETS)
    gated = next(s.id for s in sources if s.name == "gated")
    assert [(e["event"], e["image_id"]) for e in events if e["event"].startswith("source_download")] == [
        ("source_download_enabled", gated), ("source_download_restored", gated)]  # fmt: skip
    finished = events[-1]
    assert finished["exit_code"] == 0
    assert finished["counts"]["copied"] == len(sources) * len(TARGETS)
    assert isinstance(finished["bytes_written"], int)
    assert finished["bytes_written"] == sum(s.size for s in sources) * len(TARGETS)
    assert isinstance(finished["rate_bytes_per_second"], float)

    failing = write_job(tmp_path / "failing.toml", name="json-logs-fail", identity_url=emu.identity_url,
                        tenant=tenant, journal=tmp_path / "state-fail")  # fmt: skip
    set_faults(emu.admin, "JP1", {"statuses": [{"status": 403, "op": "upload", "count": None}]})
    try:
        bad = run_merged("run", str(failing), "--log-format", "json")
    finally:
        set_faults(emu.admin, "JP1", {})
    assert bad.returncode == 1, bad.stdout[-3000:]
    events = json_lines(bad)
    assert all(e["job"] == "json-logs-fail" and e["run_id"] == events[0]["run_id"] for e in events)
    assert events[-1]["event"] == "run_finished"
    assert events[-1]["exit_code"] == 1
    assert events[-1]["counts"]["failed"] == len(sources)
    assert any(e["event"] == "step" and e["outcome"] == "failed" and e["target"] == "JP1" for e in events)

    broken = tmp_path / "broken.toml"
    broken.write_text('name = "broken"\n[source]\nauth = "missing"\n')
    for args in (("run", str(broken), "--log-format", "json"), ("run", str(job), "--log-format", "json", "--nope"),
                 ("copy", "x", "--to", ":KR2", "--log-format=json")):  # fmt: skip
        result = run_merged(*args, env=home(tmp_path / "empty-home"))
        assert result.returncode == 2, (args, result.stdout)
        (error,) = json_lines(result)
        assert error["level"] == "error"
        assert error["exit_code"] == 2
