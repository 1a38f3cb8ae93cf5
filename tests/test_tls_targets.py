"""A clouds.yaml cloud's own TLS settings (``cacert``, ``verify: false``) cover every connection to that
cloud, uploads included, end to end on the real harness: real Keystone 30 and a real Glance 33 region,
each behind an HTTPS proxy whose certificate comes from a private CA that only the cloud's clouds.yaml
entry trusts (the job's ``[run]`` sets neither ``ca_bundle`` nor ``insecure``). What went through HTTPS is
counted at the proxies, not inferred."""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import trustme

from pipeline.cloud import ImageClient, Secret, new_session
from pipeline.cloud.keystone import KeystoneAuth
from pipeline.errors import ApiError

from .jobsetup import PASSWORD, PASSWORD_ENV, SourceImage, make_source, run_cli
from .proxies import TlsProxy, tls_proxy

if TYPE_CHECKING:
    from .realglance import GlanceCluster, KeystoneCluster

PROFILE = "secure-dst"  # the target's [auth.NAME] in every job: what an error has to name
# two images of a few MiB in the NHN source tenant (sizes not a multiple of the 1 MiB chunk)
SPECS: list[tuple[int, dict[str, Any], dict[str, str]]] = [
    ((2 << 20) + 77, {"name": "tls-golden", "os_distro": "ubuntu", "tags": ["golden"]}, {}),
    ((1 << 20) + 5, {"name": "tls-small", "os_type": "linux"}, {}),
]


def _job(path: Path, *, name: str, identity_url: str, tenant: str, cloud: str, region: str,
         sources: list[SourceImage]) -> Path:  # fmt: skip
    """Source KR1 through the NHN v2.0 identity; one target: ``region`` of clouds.yaml cloud ``cloud`` as
    profile ``PROFILE``. ``[run]`` has its journal dir and no TLS setting at all."""
    lines = [f'name = "{name}"',
             "[auth.nhn]", f'identity_url = "{identity_url}"', f'tenant_id = "{tenant}"', 'username = "owner"',
             f'password_env = "{PASSWORD_ENV}"',
             f"[auth.{PROFILE}]", f'cloud = "{cloud}"',
             "[source]", 'auth = "nhn"', 'region = "KR1"',
             "[[targets]]", f'auth = "{PROFILE}"', f'region = "{region}"',
             "[transfer]", 'chunk_size = "1MiB"', 'read_timeout = "30s"',
             "[select]", f"ids = {json.dumps([s.id for s in sources])}",
             "[run]", f'journal_dir = "{path.parent / ("state-" + name)}"']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _migrator_auth(keystone: KeystoneCluster) -> KeystoneAuth:
    """The target cloud's identity (migrator on dst-project), straight to Keystone over plain HTTP."""
    user = keystone.user("migrator")
    return KeystoneAuth(keystone.url, "inspect", username=user.name, user_domain_name="Default",
                        password=Secret(user.password), project_name="dst-project",
                        project_domain_name="Default")  # fmt: skip


async def _copies(keystone: KeystoneCluster, job: str, *, delete: bool = False) -> list[Mapping[str, Any]]:
    """The images of ``job`` in the real Glance KR2 as dst-project sees them, read over plain HTTP (the
    region the proxy fronts); with ``delete`` they are removed afterwards (best effort)."""
    async with new_session() as session:
        client = ImageClient(session, _migrator_auth(keystone), "KR2")
        found = [i.raw async for i in client.list_images({"imgmig_job": job})]
        if delete:
            for image in found:
                with contextlib.suppress(ApiError):
                    await client.delete_image(str(image["id"]))
        return found


@dataclass(frozen=True)
class SecureTarget:
    """The module's HTTPS set-up: both proxies, the catalog region that lists the HTTPS image endpoint, a
    clouds.yaml with one cloud per TLS case, and the NHN source tenant's images in KR1."""

    ks_proxy: TlsProxy
    glance_proxy: TlsProxy
    region: str
    clouds_yaml: Path
    tenant: str
    sources: list[SourceImage]
    secrets: tuple[str, ...]


@pytest.fixture(scope="module")
def secure_target(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureTarget]:  # fmt: skip
    """Keystone and Glance KR2 each behind an HTTPS proxy with a certificate of one throwaway CA, and a new
    catalog region ``KR2-TLS-<hex>`` whose image endpoints are the Glance proxy. Proxies and region are
    removed when the module is done, also after a failure (the catalog is shared by the session)."""
    tmp = tmp_path_factory.mktemp("tls-targets")
    tenant = uuid.uuid4().hex
    sources = make_source(ks_cluster.identity_url, tenant, partner="unused", other="unused", specs=SPECS)
    ca = trustme.CA()
    ca_file = tmp / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    user = keystone.user("migrator")
    with (
        tls_proxy(keystone.url, ca.issue_cert("127.0.0.1")) as ks_proxy,
        tls_proxy(keystone.endpoints["KR2"]["public"], ca.issue_cert("127.0.0.1")) as glance_proxy,
        keystone.image_region(glance_proxy.url, prefix="KR2-TLS") as region,
    ):
        auth = {
            "auth_url": ks_proxy.url,
            "username": user.name,
            "password": user.password,
            "user_domain_name": "Default",
            "project_name": "dst-project",
            "project_domain_name": "Default",
        }
        base: dict[str, Any] = {"auth_type": "v3password", "region_name": region, "auth": auth}
        # plain-identity: Keystone over plain HTTP, so only the image endpoint's certificate is untrusted
        plain = {**base, "auth": {**auth, "auth_url": keystone.url}}
        clouds = {"with-ca": {**base, "cacert": str(ca_file)}, "no-verify": {**base, "verify": False},
                  "no-trust": base, "plain-identity": plain}  # fmt: skip
        (tmp / "clouds.yaml").write_text(json.dumps({"clouds": clouds}))
        yield SecureTarget(ks_proxy, glance_proxy, region, tmp / "clouds.yaml", tenant, sources,
                           (user.password, PASSWORD))  # fmt: skip


@pytest.mark.real_keystone
@pytest.mark.parametrize(("cloud", "code"), [("with-ca", 0), ("no-verify", 0), ("no-trust", 1), ("plain-identity", 1)])
def test_a_clouds_tls_settings_cover_its_keystone_and_uploads(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                                                              secure_target: SecureTarget, tmp_path: Path,
                                                              cloud: str, code: int) -> None:  # fmt: skip
    """A target region whose image endpoint (and Keystone) sit behind HTTPS with a private CA trusted only
    through its clouds.yaml cloud, the job's [run] TLS settings untouched: with that CA as the cloud's
    ``cacert`` the copy succeeds (exit 0, every image copied and verified, each upload a 204 seen at the
    HTTPS proxy); with ``verify: false`` likewise; with neither, the run fails with exit 1 naming the auth
    profile and the certificate, and nothing reached either proxy; likewise when Keystone is plain HTTP and only
    the image endpoint's certificate is untrusted. No traceback, no secret anywhere."""
    target = secure_target
    ks_proxy, glance_proxy = target.ks_proxy, target.glance_proxy
    name = f"tls-{cloud}-{uuid.uuid4().hex[:6]}"
    job = _job(tmp_path / "job.toml", name=name, identity_url=ks_cluster.identity_url, tenant=target.tenant,
               cloud=cloud, region=target.region, sources=target.sources)  # fmt: skip
    assert "ca_bundle" not in job.read_text()  # the CA is trusted only through clouds.yaml
    assert "insecure" not in job.read_text()
    report_path = tmp_path / "report.json"
    ks_before, glance_before = ks_proxy.forwarded, glance_proxy.forwarded
    puts_before = glance_proxy.count("PUT", "/file")
    uploads_before = glance_proxy.count("PUT", "/file", status=204)
    try:
        result = run_cli("run", str(job), "--no-progress", "--report", str(report_path),
                         env={"OS_CLIENT_CONFIG_FILE": str(target.clouds_yaml)}, timeout=240)  # fmt: skip
        output = result.stdout + result.stderr
        written = report_path.read_text() if report_path.exists() else ""
        report = json.loads(written) if written else {}
        context = (result.returncode, result.stdout[-2000:], result.stderr[-4000:],
                   {k: report.get(k) for k in ("outcome", "counts", "unavailable_targets", "fatal")})  # fmt: skip
        assert result.returncode == code, context
        assert "Traceback" not in result.stderr, context
        for secret in target.secrets:
            assert secret not in output + written, "a secret was printed or reported"
        if code == 0:
            assert report["counts"]["copied"] == len(target.sources), context
            assert ks_proxy.forwarded > ks_before  # the token came through HTTPS
            # every image's data went through the HTTPS endpoint, once, and Glance accepted it
            puts = glance_proxy.count("PUT", "/file") - puts_before
            uploads = glance_proxy.count("PUT", "/file", status=204) - uploads_before
            assert puts == uploads == len(target.sources), glance_proxy.requests[-10:]
            copies = anyio.run(_copies, keystone, name)
            assert sorted((c["name"], c["status"], c["size"], c["checksum"]) for c in copies) == sorted(
                (s.name, "active", s.size, s.checksum) for s in target.sources)  # fmt: skip
        else:
            # refused at the TLS handshake: nothing reached Keystone or Glance
            assert (ks_proxy.forwarded, glance_proxy.forwarded) == (ks_before, glance_before)
            assert PROFILE in output, context
            assert "certificate" in output.lower(), context
    finally:  # the copies live in the session's shared KR2: best effort, never masks a failure
        with contextlib.suppress(Exception):
            anyio.run(functools.partial(_copies, keystone, name, delete=True))
