"""``imgmig check`` and the identity kinds of a job file: NHN v2.0, Keystone v3 (password and application
credential), clouds.yaml. Check authenticates every profile and resolves every region, touching no image
(counted at the emulator); then the migration story: a Keystone v3 cloud's images copied into NHN-style
regions on the real harness, verified, with metadata, and a rerun that moves 0 bytes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import trustme

from pipeline.cloud import ImageClient, new_session
from pipeline.cloud.keystone import KeystoneAuth

from .chaos import admin_post, state
from .jobsetup import PASSWORD, check_invariants_api, run_cli, write_job
from .procs import emulator_process
from .proxies import tls_proxy

if TYPE_CHECKING:
    from .realglance import GlanceCluster, KeystoneCluster

TARGETS = ("KR2", "JP1")


def test_check_reports_each_profile_and_touches_no_image(tmp_path: Path) -> None:
    """A good job: exit 0; per profile the kind, the project and each region's endpoint; the source and
    both targets resolve; the emulator saw no image request at all."""
    with emulator_process("--regions", "KR1,KR2,JP1") as emu:
        tenant = uuid.uuid4().hex
        job = write_job(tmp_path / "job.toml", name="chk", identity_url=emu.identity_url, tenant=tenant,
                        journal=tmp_path / "state")  # fmt: skip
        result = run_cli("check", str(job), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["ok"] is True
        (profile,) = doc["profiles"]
        assert (profile["name"], profile["kind"], profile["project"]) == ("main", "nhn", tenant)
        assert set(profile["endpoints"]) == {"KR1", "KR2", "JP1"}
        assert profile["expires_at"]
        assert [(p["role"], p["region"], p["endpoint"] is not None) for p in doc["places"]] == [
            ("source", "KR1", True), ("target", "KR2", True), ("target", "JP1", True)]  # fmt: skip
        assert all(s["requests"] == {} for s in state(emu.admin)["stats"].values())  # no image was touched
        text = run_cli("check", str(job))
        assert text.returncode == 0
        assert "[auth.main] NHN identity" in text.stdout


def test_check_wrong_password_exits_4_and_missing_region_exits_2(tmp_path: Path) -> None:
    """A refused password: exit 4 with one paragraph naming the profile; a region the catalog lacks: exit 2
    naming it and the regions that exist."""
    with emulator_process("--regions", "KR1,KR2,JP1") as emu:
        tenant = uuid.uuid4().hex
        job = write_job(tmp_path / "job.toml", name="chk", identity_url=emu.identity_url, tenant=tenant,
                        journal=tmp_path / "state", targets=("KR2", "XX9"))  # fmt: skip
        missing = run_cli("check", str(job))
        assert missing.returncode == 2, missing.stderr
        assert "region 'XX9' has no image endpoint" in missing.stderr
        assert "KR1, KR2, JP1" in missing.stderr or "JP1, KR1, KR2" in missing.stderr
        admin_post(emu.admin, "password", {"username": "owner", "password": "changed-elsewhere"})
        refused = run_cli("check", str(job))
        assert refused.returncode == 4, refused.stderr
        assert "auth profile 'main'" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert PASSWORD not in refused.stdout + refused.stderr


def keystone_job(path: Path, keystone: KeystoneCluster, nhn_identity: str, tenant: str, auth: str) -> Path:
    """A job: source KR1 of the Keystone v3 cloud (``auth`` is that profile's body), targets KR2 and JP1
    through the NHN v2.0 identity."""
    lines = ['name = "ks-to-nhn"', "[auth.onprem]", auth, "[auth.nhn]", f'identity_url = "{nhn_identity}"',
             f'tenant_id = "{tenant}"', 'username = "owner"', 'password_env = "IMGMIG_TEST_PASSWORD"',
             "[source]", 'auth = "onprem"', 'region = "KR1"']  # fmt: skip
    for region in TARGETS:
        lines += ["[[targets]]", 'auth = "nhn"', f'region = "{region}"']
    lines += ["[transfer]", 'chunk_size = "1MiB"', "[run]", f'journal_dir = "{path.parent / "state"}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.real_keystone
def test_check_keystone_password_and_clouds_yaml(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """Keystone v3 profiles in a job file (password by names with domains; a clouds.yaml cloud with an
    application credential) authenticate in check: their project ids and three regions' endpoints."""
    user, project = keystone.user("migrator"), keystone.project("src-project")
    password_auth = "\n".join(['type = "keystone"', f'auth_url = "{keystone.url}"', f'username = "{user.name}"',
                               'user_domain_name = "Default"', 'password_env = "KS_PASSWORD"',
                               f'project_name = "{project.name}"', 'project_domain_name = "Default"'])  # fmt: skip
    job = keystone_job(tmp_path / "job.toml", keystone, ks_cluster.identity_url, uuid.uuid4().hex, password_auth)
    result = run_cli("check", str(job), "--json", env={"KS_PASSWORD": user.password})
    assert result.returncode == 0, result.stderr
    profiles = {p["name"]: p for p in json.loads(result.stdout)["profiles"]}
    assert (profiles["onprem"]["kind"], profiles["onprem"]["project"]) == ("keystone", project.id)
    assert set(profiles["onprem"]["endpoints"]) == {"KR1", "KR2", "JP1"}
    cred = keystone.application_credential
    (tmp_path / "clouds.yaml").write_text(json.dumps({"clouds": {"onprem": {
        "auth_type": "v3applicationcredential", "region_name": "KR1",
        "auth": {"auth_url": keystone.url, "application_credential_id": cred.id,
                 "application_credential_secret": cred.secret}}}}))  # fmt: skip
    job = keystone_job(tmp_path / "job2.toml", keystone, ks_cluster.identity_url, uuid.uuid4().hex,
                       'cloud = "onprem"')  # fmt: skip
    from_file = run_cli("check", str(job), "--json", env={"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")})
    assert from_file.returncode == 0, from_file.stderr
    onprem = next(p for p in json.loads(from_file.stdout)["profiles"] if p["name"] == "onprem")
    assert (onprem["kind"], onprem["project"]) == ("cloud", project.id)
    assert cred.secret not in from_file.stdout + from_file.stderr


async def _make_sources(keystone: KeystoneCluster) -> list[dict[str, Any]]:
    cred = keystone.application_credential
    auth = KeystoneAuth(keystone.url, "seed", application_credential_id=cred.id,
                        application_credential_secret=_secret(cred.secret))  # fmt: skip
    out = []
    async with new_session() as session:
        client = ImageClient(session, auth, "KR1")
        for name, size in (("ks-golden", 3 << 20), ("ks-small", 1 << 20)):
            image = await client.create_image(
                {
                    "name": name,
                    "disk_format": "raw",
                    "container_format": "bare",
                    "os_type": "linux",
                    "os_distro": "ubuntu",
                    "tags": ["golden"],
                }
            )
            data = (name.encode() * (size // len(name) + 1))[:size]

            async def body(data: bytes = data) -> Any:
                for i in range(0, len(data), 1 << 20):
                    yield data[i : i + (1 << 20)]

            await client.upload_image(image.id, body(), size=size)
            out.append({"id": image.id, "name": name, "size": size})
    return out


def _secret(value: str) -> Any:
    from pipeline.cloud import Secret

    return Secret(value)


@pytest.mark.real_keystone
def test_keystone_v3_cloud_into_nhn_regions(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                                            tmp_path: Path) -> None:  # fmt: skip
    """The migration story: images of a Keystone v3 cloud (clouds.yaml, application credential) copied into
    NHN-style regions (v2.0 identity) on real Glance: verified copies with their metadata, and a rerun that
    moves 0 bytes."""
    from .jobsetup import SourceImage

    made = anyio.run(_make_sources, keystone)
    cred = keystone.application_credential
    (tmp_path / "clouds.yaml").write_text(json.dumps({"clouds": {"onprem": {
        "auth_type": "v3applicationcredential",
        "auth": {"auth_url": keystone.url, "application_credential_id": cred.id,
                 "application_credential_secret": cred.secret}}}}))  # fmt: skip
    tenant = uuid.uuid4().hex
    job = keystone_job(tmp_path / "job.toml", keystone, ks_cluster.identity_url, tenant, 'cloud = "onprem"')
    job.write_text(job.read_text() + "[select]\n" + f"ids = {json.dumps([m['id'] for m in made])}\n")
    env = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    first = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r1.json"), env=env)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert json.loads((tmp_path / "r1.json").read_text())["counts"]["copied"] == len(made) * len(TARGETS)
    import hashlib

    sources = []
    for m in made:
        data = (m["name"].encode() * (m["size"] // len(m["name"]) + 1))[: m["size"]]
        sources.append(SourceImage(m["id"], m["name"], m["size"], hashlib.md5(data).hexdigest(),
                                   {"name": m["name"], "os_distro": "ubuntu", "tags": ["golden"]}))  # fmt: skip
    check_invariants_api(ks_cluster.identity_url, "ks-to-nhn", sources, TARGETS, tenant=tenant)
    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r2.json"), env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "r2.json").read_text())["bytes_written"] == 0
    assert cred.secret not in first.stdout + first.stderr + again.stdout + again.stderr


@pytest.mark.real_keystone
def test_revoked_application_credential_mid_job_exits_4(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """An application credential (the Keystone v3 source's) deleted while the targets are receiving the first
    image (one image at a time): the next source request is refused, the job stops with exit 4 naming the
    profile, and nothing is retried against it; the secret appears nowhere."""
    import os
    import signal
    import subprocess
    import sys

    from .procs import stop_process, wait_until

    cred = keystone.create_application_credential(f"imgmig-revoke-{uuid.uuid4().hex[:8]}")
    seed = keystone.application_credential
    made = anyio.run(_make_sources, keystone)
    tenant = uuid.uuid4().hex
    auth = "\n".join(['type = "keystone"', f'auth_url = "{keystone.url}"',
                      f'application_credential_id = "{cred.id}"',
                      'application_credential_secret_env = "KS_APP_SECRET"'])  # fmt: skip
    job = keystone_job(tmp_path / "job.toml", keystone, ks_cluster.identity_url, tenant, auth)
    # one image at a time: the second image's source requests come after the revocation
    text = job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "1MiB/s"\n'
                                   "images_in_flight = 1")  # fmt: skip
    job.write_text(text + "[select]\n" + f"ids = {json.dumps([m['id'] for m in made])}\n")
    env = {**os.environ, "IMGMIG_TEST_PASSWORD": PASSWORD, "KS_APP_SECRET": cred.secret}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress", "--report",
                             str(tmp_path / "r.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        wait_until(lambda: any(ks_cluster.state()["stats"][r]["uploads_active"] for r in TARGETS), proc,
                   "uploads in flight")  # fmt: skip
        keystone.delete_application_credential(cred)
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 4, out + err[-3000:]
    assert "auth profile 'onprem'" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["retries"] == 0
    assert cred.secret not in out + err
    assert seed.id != cred.id  # the shared credential of the other tests was left alone


@pytest.mark.real_keystone
def test_keystone_tokens_expire_mid_job(ks_cluster: GlanceCluster, keystone: KeystoneCluster, tmp_path: Path) -> None:
    """Keystone v3 tokens that live 6 s during a job that takes longer (4 MiB at 256 KiB/s, one image at a
    time): the source profile gets a new token for the second image's requests, which come after the first
    token expired (both issued by Keystone during the run), and the job completes with every copy verified."""
    made = anyio.run(_make_sources, keystone)
    cred = keystone.application_credential
    auth = "\n".join(['type = "keystone"', f'auth_url = "{keystone.url}"', f'application_credential_id = "{cred.id}"',
                      'application_credential_secret_env = "KS_APP_SECRET"'])  # fmt: skip
    tenant = uuid.uuid4().hex
    job = keystone_job(tmp_path / "job.toml", keystone, ks_cluster.identity_url, tenant, auth)
    text = job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "256KiB/s"\n'
                                   "images_in_flight = 1")  # fmt: skip
    job.write_text(text + "[select]\n" + f"ids = {json.dumps([m['id'] for m in made])}\n")
    before = keystone.tokens_issued()
    keystone.set_token_expiration(6)
    try:
        result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r.json"),
                         env={"KS_APP_SECRET": cred.secret})  # fmt: skip
    finally:
        keystone.set_token_expiration(3600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["copied"] == len(made) * len(TARGETS)
    assert report["duration_seconds"] > 12  # longer than two token lifetimes
    # the second image's download (after the first image's 12 s) needed a token the first had outlived
    assert report["tokens_issued"]["onprem"] >= 2
    assert keystone.tokens_issued() - before >= report["tokens_issued"]["onprem"]  # Keystone issued them


@pytest.mark.real_keystone
def test_a_clouds_verify_and_cacert_apply_to_that_cloud(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """Keystone behind HTTPS with a certificate of a private CA, the job's [run] TLS settings untouched: a
    clouds.yaml cloud with that CA as its cacert authenticates, one with verify: false too, and one with
    neither cannot reach it (exit 1, naming the profile and the certificate), each counted at the proxy."""
    ca = trustme.CA()
    ca_file = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cred = keystone.application_credential
    with tls_proxy(keystone.url, ca.issue_cert("127.0.0.1")) as proxy:
        auth_url = proxy.url
        base = {"auth_type": "v3applicationcredential", "region_name": "KR1",
                "auth": {"auth_url": auth_url, "application_credential_id": cred.id,
                         "application_credential_secret": cred.secret}}  # fmt: skip
        clouds = {"with-ca": {**base, "cacert": str(ca_file)}, "no-verify": {**base, "verify": False},
                  "default": base}  # fmt: skip
        (tmp_path / "clouds.yaml").write_text(json.dumps({"clouds": clouds}))
        env = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
        for name, code in (("with-ca", 0), ("no-verify", 0), ("default", 1)):
            job = keystone_job(tmp_path / f"{name}.toml", keystone, ks_cluster.identity_url, uuid.uuid4().hex,
                               f'cloud = "{name}"')  # fmt: skip
            before = proxy.forwarded
            result = run_cli("check", str(job), env=env)
            assert result.returncode == code, (name, result.stdout, result.stderr[-2000:])
            assert "Traceback" not in result.stderr
            assert cred.secret not in result.stdout + result.stderr
            if code == 0:
                assert proxy.forwarded > before, name  # the token came through the HTTPS proxy
            else:
                assert proxy.forwarded == before  # refused at the TLS handshake, nothing forwarded
                assert "auth profile 'onprem'" in result.stderr
                assert "certificate" in result.stderr.lower()
