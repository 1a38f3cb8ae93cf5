"""Copies that can boot, on real OpenStack Glance 33: an AMI set whose references follow the copies (also sharded),
a volume-backed snapshot that gets no copy anywhere, and a Glance source without ``os_type`` migrating into regions
that follow NHN's rules (the emulator), blocked until a default gives the copies one."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session

from .chaos import state
from .jobsetup import PASSWORD, PASSWORD_ENV, admin_images, api_images, new_tenants, run_cli, write_job
from .procs import emulator_process

if TYPE_CHECKING:
    from .realglance import GlanceCluster

pytestmark = pytest.mark.real_glance
TARGETS = ("KR2", "JP1")


async def _create(identity_url: str, tenant: str, images: list[dict[str, Any]]) -> list[str]:
    """Create ``images`` in KR1 through the API as ``tenant`` (each: ``fields``, ``data``, and ``refs``: property ->
    the index of an earlier image whose id it names); their ids."""
    ids: list[str] = []
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), "KR1")
        for spec in images:
            fields = {**spec["fields"], **{key: ids[index] for key, index in spec.get("refs", {}).items()}}
            image = await client.create_image(fields)
            data: bytes = spec["data"]

            async def body(data: bytes = data) -> Any:
                yield data

            await client.upload_image(image.id, body(), size=len(data))
            ids.append(image.id)
    return ids


def create(identity_url: str, tenant: str, images: list[dict[str, Any]]) -> list[str]:
    return list(anyio.run(_create, identity_url, tenant, images))


def ami_set(cluster: GlanceCluster, tenant: str, name: str) -> list[str]:
    """A kernel, a ramdisk and a machine image naming both, in KR1 of real Glance: [kernel, ramdisk, machine]."""
    return create(cluster.identity_url, tenant, [
        {"fields": {"name": f"{name}-kernel", "disk_format": "aki", "container_format": "aki", "os_type": "linux"},
         "data": b"k" * 4096},
        {"fields": {"name": f"{name}-ramdisk", "disk_format": "ari", "container_format": "ari", "os_type": "linux"},
         "data": b"r" * 4096},
        {"fields": {"name": name, "disk_format": "ami", "container_format": "ami", "os_type": "linux"},
         "data": b"m" * 65536, "refs": {"kernel_id": 0, "ramdisk_id": 1}},
    ])  # fmt: skip


def assert_references_follow(cluster: GlanceCluster, tenant: str, job: str, ids: list[str]) -> None:
    """In each target: exactly one copy of each of the three, and the machine image's copy names that target's
    copies of the kernel and the ramdisk."""
    kernel, ramdisk, machine = ids
    for region in TARGETS:
        made = {i["imgmig_source_id"]: i for i in api_images(cluster.identity_url, tenant, region)
                if i.get("imgmig_job") == job}  # fmt: skip
        assert set(made) == set(ids), region
        assert made[machine]["kernel_id"] == made[kernel]["id"], region
        assert made[machine]["ramdisk_id"] == made[ramdisk]["id"], region


def test_an_ami_set_arrives_with_its_references_following(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Selected by the machine image's name alone: the kernel and ramdisk are included and copied first, and in each
    target the machine image's copy names the copies there; a rerun moves 0 bytes."""
    tenant = new_tenants(1)[0]
    name = f"boot-{uuid.uuid4().hex[:8]}"
    ids = ami_set(glance_cluster, tenant, name)
    job = write_job(tmp_path / "job.toml", name="ami", identity_url=glance_cluster.identity_url, tenant=tenant,
                    journal=tmp_path / "state", extra=f'[select]\nnames = ["{name}"]\n')  # fmt: skip
    plan = run_cli("plan", str(job), "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert f"source image {ids[0]} is included: kernel of {name}" in json.loads(plan.stdout)["notes"]
    first = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r1.json"))
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert json.loads((tmp_path / "r1.json").read_text())["counts"]["copied"] == 3 * len(TARGETS)
    assert_references_follow(glance_cluster, tenant, "ami", ids)
    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r2.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "r2.json").read_text())["bytes_written"] == 0


def test_an_ami_set_sharded_three_ways_is_copied_by_one_shard(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """``--shards 3`` (JOB_COMPLETION_INDEX 0, 1, 2): one shard copies the whole group, the two others nothing;
    the references follow in each target."""
    tenant = new_tenants(1)[0]
    name = f"boot-{uuid.uuid4().hex[:8]}"
    ids = ami_set(glance_cluster, tenant, name)
    job = write_job(tmp_path / "job.toml", name="ami-sharded", identity_url=glance_cluster.identity_url,
                    tenant=tenant, journal=tmp_path / "state", extra=f'[select]\nnames = ["{name}"]\n')  # fmt: skip
    copied = []
    for index in range(3):
        report = tmp_path / f"r{index}.json"
        result = run_cli("run", str(job), "--shards", "3", "--no-progress", "--report", str(report),
                         env={"JOB_COMPLETION_INDEX": str(index)})  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        copied.append(json.loads(report.read_text())["counts"]["copied"])
    assert sorted(copied) == [0, 0, 3 * len(TARGETS)]
    assert_references_follow(glance_cluster, tenant, "ami-sharded", ids)


def volume_snapshot(cluster: GlanceCluster, tenant: str, name: str) -> str:
    """What Nova makes of a volume-backed instance (``compute.api.snapshot_volume_backed``, activated with an empty
    upload as raw/bare): an active image with no data, whose block_device_mapping names a block-storage snapshot of
    the source region."""
    bdm = [{"source_type": "snapshot", "destination_type": "volume", "snapshot_id": str(uuid.uuid4()),
            "volume_size": 20, "boot_index": 0, "device_name": "/dev/vda", "delete_on_termination": True}]  # fmt: skip
    fields = {"name": name, "disk_format": "raw", "container_format": "bare", "os_type": "linux", "bdm_v2": "True",
              "root_device_name": "/dev/vda", "block_device_mapping": json.dumps(bdm)}  # fmt: skip
    return create(cluster.identity_url, tenant, [{"fields": fields, "data": b""}])[0]


def test_a_volume_backed_snapshot_gets_no_copy(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Plan and report give the reason (not_portable, naming block_device_mapping); no image of the job appears in
    any target; exit 1, and exit 0 with ``[select] volume_backed = "skip"``."""
    tenant = new_tenants(1)[0]
    name = f"vol-snap-{uuid.uuid4().hex[:8]}"
    snap = volume_snapshot(glance_cluster, tenant, name)
    select = f'[select]\nnames = ["{name}"]\n'
    job = write_job(tmp_path / "job.toml", name="vol", identity_url=glance_cluster.identity_url, tenant=tenant,
                    journal=tmp_path / "state", extra=select)  # fmt: skip
    plan = json.loads(run_cli("plan", str(job), "--json").stdout)
    (image,) = plan["images"]
    assert image["id"] == snap
    assert {s["action"] for s in image["steps"]} == {"not_portable"}
    assert "block_device_mapping" in image["steps"][0]["reason"]
    blocked = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r1.json"))
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr[-2000:]
    steps = json.loads((tmp_path / "r1.json").read_text())["steps"]
    assert {(s["outcome"], "block_device_mapping" in s["error"]) for s in steps} == {("not_portable", True)}
    for region in TARGETS:
        assert api_images(glance_cluster.identity_url, tenant, region) == [], region
    job.write_text(job.read_text().replace(select, select + 'volume_backed = "skip"\n'))
    skipped = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r2.json"))
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr[-2000:]
    assert {s["outcome"] for s in json.loads((tmp_path / "r2.json").read_text())["steps"]} == {"skipped"}


def test_a_glance_source_without_os_type_into_nhn_regions(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Real Glance as the source, the emulator's NHN-rule regions as targets: an image without os_type is blocked in
    plan with the reason, and no create reaches the targets (counted at the emulator); with
    ``[copy] defaults = { os_type = "linux" }`` the copies arrive with os_type linux, and the run exits 0."""
    tenant, target_tenant = new_tenants(2)
    name = f"plain-{uuid.uuid4().hex[:8]}"
    create(glance_cluster.identity_url, tenant, [
        {"fields": {"name": name, "disk_format": "raw", "container_format": "bare", "os_distro": "ubuntu"},
         "data": b"p" * 70000}])  # fmt: skip
    with emulator_process("--regions", "KR2,JP1") as emu:
        lines = ['name = "into-nhn"', "[auth.glance]", f'identity_url = "{glance_cluster.identity_url}"',
                 f'tenant_id = "{tenant}"', 'username = "owner"', f'password_env = "{PASSWORD_ENV}"', "[auth.nhn]",
                 f'identity_url = "{emu.identity_url}"', f'tenant_id = "{target_tenant}"', 'username = "owner"',
                 f'password_env = "{PASSWORD_ENV}"', "[source]", 'auth = "glance"', 'region = "KR1"']  # fmt: skip
        for region in TARGETS:
            lines += ["[[targets]]", 'auth = "nhn"', f'region = "{region}"']
        lines += ["[select]", f'names = ["{name}"]', "[run]", f'journal_dir = "{tmp_path / "state"}"']
        job = tmp_path / "job.toml"
        job.write_text("\n".join(lines) + "\n")
        plan = json.loads(run_cli("plan", str(job), "--json").stdout)
        steps = plan["images"][0]["steps"]
        assert {s["action"] for s in steps} == {"blocked"}
        assert all("requires os_type" in s["reason"] and "[copy] defaults" in s["reason"] for s in steps)
        blocked = run_cli("run", str(job), "--no-progress")
        assert blocked.returncode == 1, blocked.stdout + blocked.stderr[-2000:]
        stats = state(emu.admin)["stats"]
        assert all(stats[r]["requests"].get("create", 0) == 0 for r in TARGETS)
        job.write_text(job.read_text() + '[copy]\ndefaults = { os_type = "linux" }\n')
        done = run_cli("run", str(job), "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        for region in TARGETS:
            (copy,) = [i for i in admin_images(emu.admin, region) if i.get("imgmig_job") == "into-nhn"]
            assert (copy["os_type"], copy["imgmig_defaulted"], copy["status"]) == ("linux", "os_type", "active")


def test_a_source_deleted_mid_run_then_its_leftovers(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Two images, one at a time, the first throttled: once KR2 reports the first upload in progress, the other
    source is deleted through the API. The run exits 0; the deleted one is ``vanished`` in both targets and no image
    of it is left there. Then a queued copy with this job's provenance whose source does not exist (as a crash would
    leave it) is planted in JP1: the next run deletes it, without prune."""
    import os
    import signal
    import subprocess
    import sys

    from .procs import stop_process, wait_until

    tenant = new_tenants(1)[0]
    doomed, slow = create(glance_cluster.identity_url, tenant, [
        {"fields": {"name": "doomed", "disk_format": "raw", "container_format": "bare", "os_type": "linux"},
         "data": b"d" * 300_000},
        {"fields": {"name": "slow", "disk_format": "raw", "container_format": "bare", "os_type": "linux"},
         "data": b"s" * (3 << 20)},
    ])  # fmt: skip
    job = write_job(tmp_path / "job.toml", name="gone", identity_url=glance_cluster.identity_url, tenant=tenant,
                    journal=tmp_path / "state", extra='[select]\nnames = ["doomed", "slow"]\n')  # fmt: skip
    job.write_text(job.read_text().replace("images_in_flight = 2", 'images_in_flight = 1\nbandwidth = "1MiB/s"'))
    env = {**os.environ, PASSWORD_ENV: PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress", "--report",
                             str(tmp_path / "r1.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        wait_until(lambda: glance_cluster.state()["stats"]["KR2"]["uploads_active"] > 0, proc, "an upload in flight")
        anyio.run(_delete, glance_cluster.identity_url, tenant, doomed)
        out, err = proc.communicate(timeout=300)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 0, out + err[-3000:]
    outcomes = {(s["image_id"], s["target"]): s["outcome"] for s in json.loads((tmp_path / "r1.json").read_text())
                ["steps"]}  # fmt: skip
    assert outcomes == {**{(slow, t): "copied" for t in TARGETS}, **{(doomed, t): "vanished" for t in TARGETS}}
    for region in TARGETS:
        mine = [i for i in api_images(glance_cluster.identity_url, tenant, region) if i.get("imgmig_job") == "gone"]
        assert [i["imgmig_source_id"] for i in mine] == [slow], region
    gone_id = str(uuid.uuid4())
    planted = anyio.run(_plant, glance_cluster.identity_url, tenant, gone_id)
    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r2.json"))
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert json.loads((tmp_path / "r2.json").read_text())["orphans_deleted"] == 1
    assert planted not in {i["id"] for i in api_images(glance_cluster.identity_url, tenant, "JP1")}


async def _delete(identity_url: str, tenant: str, image_id: str) -> None:
    async with new_session() as session:
        await ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), "KR1").delete_image(
            image_id
        )


async def _plant(identity_url: str, tenant: str, source_id: str) -> str:
    """A queued image in JP1 carrying job "gone"'s provenance for ``source_id``: what a crash leaves."""
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), "JP1")
        image = await client.create_image({"name": "leftover", "disk_format": "raw", "container_format": "bare",
                                           "imgmig_job": "gone", "imgmig_source_id": source_id,
                                           "imgmig_source_region": "KR1", "imgmig_source_checksum": ""})  # fmt: skip
        return image.id
