"""Security: secrets never leak, files are private, TLS is verified by default, access is never widened,
and foreign images are never touched."""

from __future__ import annotations

import json
import stat
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.config import parse_job
from pipeline.emulator import Emulator
from pipeline.run.runner import RunControls, run_job

from .jobsetup import PASSWORD, add, check_invariants, copies, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

TARGETS = ("KR2", "JP1")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One `imgmig emulate` for the module."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def _tokens(emu: EmulatorProcess) -> list[str]:
    with urllib.request.urlopen(f"{emu.admin}/tokens", timeout=10) as resp:
        tokens: list[str] = json.loads(resp.read())["tokens"]
        return tokens


def test_no_secret_in_anything_a_job_writes(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A full job (password and fixed-token profiles, a failure, a retry, logs at debug): neither the
    password, the fixed token, nor any token the identity issued appears in stdout, stderr, the journal,
    the report, the status view or --help."""
    tenant, partner, other = new_tenants(3)
    make_source(emu.identity_url, tenant, partner=partner, other=other)
    fixed_token = "fixed-token-" + uuid.uuid4().hex
    job = write_job(tmp_path / "job.toml", name="secrets", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", targets=("KR2",))  # fmt: skip
    job.write_text(job.read_text() + '\n[auth.dead]\nendpoint = "http://127.0.0.1:9"\ntoken_env = "DEAD_TOKEN"\n'
                   '[[targets]]\nauth = "dead"\nregion = "XX1"\n')  # fmt: skip
    env = {"DEAD_TOKEN": fixed_token}
    outputs = []
    for args in (("run", "--log-level", "debug", "--log-format", "json", "--report", str(tmp_path / "r.json")),
                 ("status", "--json"), ("plan", "--json"), ("verify",)):  # fmt: skip
        result = run_cli(args[0], str(job), *args[1:], env=env)
        outputs += [result.stdout, result.stderr]
    outputs.append(run_cli("run", "--help").stdout)
    outputs.append(run_cli("--help").stdout)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "job.toml"]
    assert any(p.name == "journal.jsonl" or p.name == "snapshot.json" for p in files)
    outputs += [p.read_text(errors="replace") for p in files]
    secrets = [PASSWORD, fixed_token, *_tokens(emu)]
    assert len(secrets) > 2  # tokens were issued
    for text in outputs:
        for secret in secrets:
            assert secret not in text


def test_written_files_are_private(emu: EmulatorProcess, tmp_path: Path) -> None:
    """Journal files and the report are 0600 in 0700 directories."""
    tenant, partner, other = new_tenants(3)
    make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="modes", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state" / "modes")  # fmt: skip
    report = tmp_path / "reports" / "r.json"
    assert run_cli("run", str(job), "--no-progress", "--report", str(report)).returncode == 0
    for directory in (tmp_path / "state" / "modes", report.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for path in [report, *(tmp_path / "state" / "modes").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_spool_files_are_private(emulator: Emulator, tmp_path: Path) -> None:
    """Spool files are created 0600 in a 0700 directory while an image transfers (then removed)."""
    from pipeline.transfer.source import Spool

    spool = Spool(tmp_path / "spool", "img", 0)
    try:
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600
    finally:
        spool.remove()


@pytest.fixture(scope="module")
def tls_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorProcess, Path]]:
    """The emulator over HTTPS with a certificate from a throwaway CA; yields it and the CA bundle."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tmp = tmp_path_factory.mktemp("tls")
    chain, key, bundle = tmp / "chain.pem", tmp / "key.pem", tmp / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    with emulator_process("--regions", "KR1,KR2", "--tls-cert", str(chain), "--tls-key", str(key)) as proc:
        assert proc.identity_url.startswith("https://")
        yield proc, bundle


def _tls_job(tmp_path: Path, emu: EmulatorProcess, extra: str) -> Path:
    tenant = new_tenants(1)[0]
    # an empty tenant: these tests are about the connection, so an empty selection is allowed
    job = write_job(tmp_path / "job.toml", name="tls", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", targets=("KR2",), extra="[select]\nallow_empty = true\n")  # fmt: skip
    job.write_text(job.read_text().replace("[run]\n", f"[run]\n{extra}"))
    return job


def test_tls_is_verified_by_default(tls_emu: tuple[EmulatorProcess, Path], tmp_path: Path) -> None:
    """An untrusted certificate is refused (no retry storm), with a message that points at ca_bundle."""
    emu, _ = tls_emu
    result = run_cli("plan", str(_tls_job(tmp_path, emu, "")))
    assert result.returncode != 0
    assert "TLS certificate verification failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_ca_bundle_makes_tls_work(tls_emu: tuple[EmulatorProcess, Path], tmp_path: Path) -> None:
    """With [run] ca_bundle naming the CA, the same job plans and runs over verified TLS."""
    emu, bundle = tls_emu
    result = run_cli("run", str(_tls_job(tmp_path, emu, f'ca_bundle = "{bundle}"\n')), "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tls_verification_disabled" not in result.stderr


def test_insecure_must_be_explicit_and_is_loud(tls_emu: tuple[EmulatorProcess, Path], tmp_path: Path) -> None:
    """insecure = true skips verification, and every run says so in its logs."""
    emu, _ = tls_emu
    result = run_cli("run", str(_tls_job(tmp_path, emu, "insecure = true\n")), "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tls_verification_disabled" in result.stderr
    assert "NOT verified" in result.stderr


async def test_visibility_is_never_widened(emulator: Emulator, tmp_path: Path) -> None:
    """Private stays private, shared stays shared, public is never copied, and with
    [copy] visibility = false every copy is private (its members are then not copied)."""
    tenant, member = uuid.uuid4().hex, uuid.uuid4().hex
    private = add(emulator, tenant, "p", visibility="private")
    shared = add(emulator, tenant, "s", visibility="shared", members={member: "accepted"})
    public = add(emulator, tenant, "pub", visibility="public")

    def spec(copy: dict[str, object]) -> object:
        auth = {"identity_url": emulator.identity_url, "tenant_id": tenant, "username": "u", "password_env": "PW"}
        return parse_job({"name": f"vis-{uuid.uuid4().hex[:6]}", "auth": {"m": auth},
                          "source": {"auth": "m", "region": "KR1"},
                          "targets": [{"auth": "m", "region": r} for r in TARGETS],
                          "select": {"ids": [private.id, shared.id, public.id]}, "copy": copy,
                          "run": {"journal_dir": str(tmp_path / uuid.uuid4().hex)}}, "t", {"PW": "p"})  # fmt: skip

    summary = await run_job(spec({}), RunControls(signals=()))  # type: ignore[arg-type]
    assert {s.reason for s in summary.steps if s.image_id == public.id} == {"public images are never copied"}
    for region in TARGETS:
        images = list(emulator.store(region).images.values())
        assert all(r.visibility != "public" for r in images)
        got = {r.properties["imgmig_source_id"]: r for r in images}
        assert got[private.id].visibility == "private"
        assert got[shared.id].visibility == "shared"
        for rec in images:
            emulator.store(region).images.pop(rec.id)  # start the next job from empty targets
    await run_job(spec({"visibility": False}), RunControls(signals=()))  # type: ignore[arg-type]
    for region in TARGETS:
        assert {r.visibility for r in emulator.store(region).images.values()} == {"private"}
        assert all(not r.members for r in emulator.store(region).images.values())


@pytest.mark.parametrize("server_filters", ["honoured", "ignored"])
async def test_images_without_provenance_are_never_touched(emulator: Emulator, tmp_path: Path,
                                                           server_filters: str) -> None:  # fmt: skip
    """Same-named images in a target that lack this job's provenance are never modified or deleted, also
    when the server ignores the property filter imgmig lists with (every image comes back): the
    provenance is re-checked on each image, and again before each delete."""
    emulator.faults("KR2").ignore_property_filters = server_filters == "ignored"
    tenant = uuid.uuid4().hex
    src = add(emulator, tenant, "twin", tags=["a"])
    fields = {"os_type": "linux", "disk_format": "raw", "container_format": "bare"}
    twin = emulator.store("KR2").add_bytes(tenant, b"other", {"name": "twin", **fields, "note": "mine"})
    other_job = emulator.store("KR2").add_bytes(
        tenant, b"x", {"name": "twin", **fields, "imgmig_job": "another-job", "imgmig_source_id": src.id}
    )
    before = (twin.to_json(), other_job.to_json())
    async with new_session() as session:  # the scenario holds: what a filtered listing returns
        client = ImageClient(session, PasswordAuth(emulator.identity_url, tenant, "u", Secret("p")), "KR2")
        listed = {i.id async for i in client.list_images({"imgmig_job": "mine", "visibility": "all"})}
    assert (other_job.id in listed) == (server_filters == "ignored")
    auth = {"identity_url": emulator.identity_url, "tenant_id": tenant, "username": "u", "password_env": "PW"}
    spec = parse_job({"name": "mine", "auth": {"m": auth}, "source": {"auth": "m", "region": "KR1"},
                      "targets": [{"auth": "m", "region": "KR2"}],
                      "run": {"journal_dir": str(tmp_path / "s")}}, "t", {"PW": "p"})  # fmt: skip
    for _ in range(2):
        assert (await run_job(spec, RunControls(signals=()))).exit_code == 0
    assert (twin.to_json(), other_job.to_json()) == before
    assert len(copies(emulator, "KR2", tenant)) == 0  # copies() looks for job "meta"; ours is "mine"
    ours = [r for r in emulator.store("KR2").images.values() if r.properties.get("imgmig_job") == "mine"]
    assert len(ours) == 1


def test_crash_test_invariants_helper_is_strict(emu: EmulatorProcess, tmp_path: Path) -> None:
    """The invariant checker itself catches a duplicate copy (so the crash tests cannot pass vacuously)."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="strict", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state", targets=("KR2",))  # fmt: skip
    assert run_cli("run", str(job), "--no-progress").returncode == 0
    check_invariants(emu.admin, "strict", sources, ("KR2",), tenant=tenant)
    # plant a duplicate carrying the job's provenance, then the checker must object
    import anyio

    from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session

    async def plant() -> None:
        async with new_session() as session:
            client = ImageClient(session, PasswordAuth(emu.identity_url, tenant, "o", Secret(PASSWORD)), "KR2")
            await client.create_image({"name": "dup", "os_type": "linux", "imgmig_job": "strict",
                                       "imgmig_source_id": sources[0].id})  # fmt: skip

    anyio.run(plant)
    with pytest.raises(AssertionError, match=r"2 copies of golden-a"):
        check_invariants(emu.admin, "strict", sources, ("KR2",), tenant=tenant)


@pytest.mark.real_keystone
def test_no_secret_from_clouds_yaml_or_secure_yaml_anywhere(ks_cluster: Any, keystone: Any, tmp_path: Path) -> None:
    """A Keystone v3 source taken from clouds.yaml, its password in secure.yaml (and an application
    credential's secret there too), then from the OS_* variables: check, plan, run at debug level, status
    and the report carry neither secret, nor does any file in the journal directory."""
    import yaml

    user, project = keystone.user("migrator"), keystone.project("src-project")
    cred = keystone.application_credential
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": {
        "onprem": {"auth_type": "password", "region_name": "KR1",
                   "auth": {"auth_url": keystone.url, "username": user.name, "user_domain_name": "Default",
                            "project_name": project.name, "project_domain_name": "Default"}},
        "onprem-app": {"auth_type": "v3applicationcredential",
                       "auth": {"auth_url": keystone.url, "application_credential_id": cred.id}}}}))  # fmt: skip
    (tmp_path / "secure.yaml").write_text(yaml.safe_dump({"clouds": {
        "onprem": {"auth": {"password": user.password}},
        "onprem-app": {"auth": {"application_credential_secret": cred.secret}}}}))  # fmt: skip
    tenant = uuid.uuid4().hex
    job = tmp_path / "job.toml"
    job.write_text("\n".join([
        'name = "sec-clouds"', '[auth.onprem]', 'cloud = "onprem"', '[auth.app]', 'cloud = "onprem-app"',
        '[auth.nhn]', f'identity_url = "{ks_cluster.identity_url}"', f'tenant_id = "{tenant}"', 'username = "owner"',
        'password_env = "IMGMIG_TEST_PASSWORD"', '[source]', 'auth = "onprem"', 'region = "KR1"',
        '[[targets]]', 'auth = "nhn"', 'region = "KR2"', '[select]', 'names = ["no-such-image-*"]',
        'allow_empty = true',
        '[run]', f'journal_dir = "{tmp_path / "state"}"', ""]))  # fmt: skip
    env = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
           "OS_CLIENT_SECURE_FILE": str(tmp_path / "secure.yaml")}  # fmt: skip
    outputs = []
    for args in (("check", str(job)), ("check", str(job), "--json"), ("plan", str(job), "--json"),
                 ("run", str(job), "--no-progress", "--log-level", "debug", "--log-format", "json", "--report",
                  str(tmp_path / "report.json")), ("status", str(job), "--json")):  # fmt: skip
        result = run_cli(*args, env=env)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        outputs.append(result.stdout + result.stderr)
    outputs += [p.read_text(errors="replace") for p in (tmp_path / "state").iterdir() if p.is_file()]
    outputs.append((tmp_path / "report.json").read_text())
    assert any("onprem" in text for text in outputs)  # the scenario ran: the cloud profile was used
    # the OS_* variables (cloud = "envvars"), as the openstack CLI takes them
    job.write_text(job.read_text().replace('cloud = "onprem"', 'cloud = "envvars"'))
    os_env = {"OS_AUTH_URL": keystone.url, "OS_USERNAME": user.name, "OS_PASSWORD": user.password,
              "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_NAME": project.name,
              "OS_PROJECT_DOMAIN_NAME": "Default", **env}  # fmt: skip
    for args in (("check", str(job), "--json"), ("run", str(job), "--no-progress", "--log-level", "debug",
                                                 "--log-format", "json")):  # fmt: skip
        result = run_cli(*args, env=os_env)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        outputs.append(result.stdout + result.stderr)
    assert '"kind": "cloud"' in outputs[-2]
    for text in outputs:
        assert user.password not in text
        assert cred.secret not in text
