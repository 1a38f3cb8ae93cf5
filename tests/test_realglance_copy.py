"""``imgmig copy`` against real OpenStack Glance 33 (issue 24): by name from KR1 to KR2 and JP1 with a profiles
file (NHN-style identity), killed -9 and resumed by the same command, then a third that sends nothing (counted at
the proxy in front of Glance); and with a clouds.yaml cloud of the real Keystone v3 as the source."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml

from pipeline.cloud import ImageClient, Secret, new_session
from pipeline.cloud.keystone import KeystoneAuth

from .jobsetup import PASSWORD_ENV, check_invariants_api, make_source, new_tenants, run_cli

if TYPE_CHECKING:
    from .realglance import GlanceCluster, KeystoneCluster

TARGETS = ("KR2", "JP1")
SPECS: list[tuple[int, dict[str, Any], dict[str, str]]] = [
    ((3 << 20) + 7, {"name": "golden-a", "os_distro": "ubuntu", "tags": ["golden"]}, {}),
    (2 << 20, {"name": "golden-b"}, {}),
    (1 << 20, {"name": "other-c"}, {}),
]


def home(tmp_path: Path, profiles: str = "", clouds: dict[str, Any] | None = None) -> dict[str, str]:
    """HOME, XDG directories, profiles file and clouds.yaml of the test's own."""
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "profiles.toml").write_text(profiles)
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": clouds or {}}))
    return {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"),
            "IMGMIG_PROFILES": str(tmp_path / "profiles.toml"), "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
            "OS_CLIENT_SECURE_FILE": str(tmp_path / "secure.yaml")}  # fmt: skip


def uploads(cluster: GlanceCluster) -> dict[str, int]:
    """Uploads each target region received, counted at the proxy in front of Glance."""
    stats = cluster.state()["stats"]
    return {r: int(stats[r]["requests"].get("upload", 0)) + int(stats[r]["uploads_started"]) for r in TARGETS}


@pytest.mark.real_glance
def test_copy_on_real_glance_resumes_after_kill_9_and_then_sends_nothing(glance_cluster: GlanceCluster,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    tenant, partner, other = new_tenants(3)
    sources = make_source(glance_cluster.identity_url, tenant, partner=partner, other=other, specs=SPECS)
    profiles = "\n".join(["[auth.nhn]", f'identity_url = "{glance_cluster.identity_url}"', f'tenant_id = "{tenant}"',
                          'username = "owner"', f'password_env = "{PASSWORD_ENV}"', ""])  # fmt: skip
    env = home(tmp_path, profiles)
    command = ["copy", "--from", "nhn:KR1", "--to", "nhn:KR2,JP1", "golden-*", "--no-progress", "--json"]
    crashed = run_cli(*command, env={**env, "IMGMIG_FAILPOINTS": "uploading@3"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    again = run_cli(*command, "--save", str(tmp_path / "copy.toml"), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    name = json.loads(again.stdout)["job"]
    named = [s for s in sources if s.name.startswith("golden-")]
    check_invariants_api(glance_cluster.identity_url, name, named, TARGETS, tenant=tenant)
    before = uploads(glance_cluster)
    third = run_cli(*command, env=env)
    assert third.returncode == 0, third.stderr[-2000:]
    assert uploads(glance_cluster) == before  # Glance received no upload at all
    assert json.loads(third.stdout)["counts"]["up_to_date"] == len(named) * len(TARGETS)
    status = run_cli("status", str(tmp_path / "copy.toml"), "--json", env=env)
    assert [r["exit_code"] for r in json.loads(status.stdout)["runs"]][-2:] == [0, 0]
    assert len(json.loads(status.stdout)["runs"]) == 3


async def _seed_and_find(keystone: KeystoneCluster, name: str, data: bytes, job: str | None) -> dict[str, Any]:
    """With ``job`` None: create the source image in KR1 (project src-project); else every copy of that job in
    the target regions, as the project sees them."""
    user = keystone.user("migrator")
    auth = KeystoneAuth(keystone.url, "seed", username=user.name, user_domain_name="Default",
                        password=Secret(user.password), project_name="src-project",
                        project_domain_name="Default")  # fmt: skip
    async with new_session() as session:
        if job is None:
            client = ImageClient(session, auth, "KR1")
            image = await client.create_image({"name": name, "disk_format": "raw", "container_format": "bare"})

            async def body():  # type: ignore[no-untyped-def]
                yield data

            await client.upload_image(image.id, body(), size=len(data))
            return {"id": image.id}
        found: dict[str, Any] = {}
        for region in TARGETS:
            client = ImageClient(session, auth, region)
            found[region] = [i.raw async for i in client.list_images({"imgmig_job": job})]
        return found


@pytest.mark.real_keystone
def test_copy_from_a_keystone_v3_cloud_of_clouds_yaml(ks_cluster: GlanceCluster, keystone: KeystoneCluster,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """The source is a clouds.yaml cloud of the real Keystone v3 (its password in secure.yaml); the image, by
    name, lands in KR2 and JP1 of the same project, one active copy each with the source's checksum."""
    name = f"ks-copy-{uuid.uuid4().hex[:8]}"
    data = uuid.uuid4().bytes * 40000
    source = anyio.run(_seed_and_find, keystone, name, data, None)
    user = keystone.user("migrator")
    cloud = {"auth_type": "password", "region_name": "KR1",
             "auth": {"auth_url": keystone.url, "username": user.name, "user_domain_name": "Default",
                      "project_name": "src-project", "project_domain_name": "Default"}}  # fmt: skip
    env = home(tmp_path, clouds={"onprem": cloud})
    (tmp_path / "secure.yaml").write_text(yaml.safe_dump({"clouds": {"onprem": {"auth": {"password": user.password}}}}))
    result = run_cli("copy", "--from", "onprem", "--to", "onprem:KR2,JP1", name, "--no-progress", "--json",
                     env={**env, PASSWORD_ENV: ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    job = json.loads(result.stdout)["job"]
    found = anyio.run(_seed_and_find, keystone, name, data, job)
    for region in TARGETS:
        (copy,) = [c for c in found[region] if c.get("imgmig_source_id") == source["id"]]
        assert copy["status"] == "active"
        assert copy["checksum"] == hashlib.md5(data).hexdigest()
        assert copy["name"] == name
    assert user.password not in result.stdout + result.stderr
