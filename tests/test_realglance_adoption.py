"""Taking over what is there, and deletes that can be undone, on real OpenStack Glance 33 (through the CLI, with
uploads and lost answers counted at the proxy in front of each region): adoption of identical images made without
imgmig, a near miss left alone, a renamed job, and a grace-period prune that retires (hidden, deactivated), keeps,
restores (a returning source, ``imgmig restore``) and deletes after the grace."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session

from .jobsetup import PASSWORD, PASSWORD_ENV, api_images, new_tenants, run_cli, write_job

if TYPE_CHECKING:
    from .realglance import GlanceCluster

pytestmark = pytest.mark.real_glance
TARGETS = ("KR2", "JP1")


async def _create(identity_url: str, tenant: str, region: str, images: list[tuple[dict[str, Any], bytes]]) -> list[str]:
    ids = []
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), region)
        for fields, data in images:
            image = await client.create_image(
                {"disk_format": "raw", "container_format": "bare", "os_type": "linux", **fields}
            )

            async def body(data: bytes = data) -> Any:
                yield data

            await client.upload_image(image.id, body(), size=len(data))
            ids.append(image.id)
    return ids


def create(cluster: GlanceCluster, tenant: str, region: str, images: list[tuple[dict[str, Any], bytes]]) -> list[str]:
    """Images made through the API as ``tenant`` (by hand, as an operator would): their ids."""
    return list(anyio.run(_create, cluster.identity_url, tenant, region, images))


def _uploads(cluster: GlanceCluster) -> dict[str, int]:
    stats = cluster.state()["stats"]
    return {r: stats[r]["uploads_started"] for r in TARGETS}


def _by_name(cluster: GlanceCluster, tenant: str, region: str, name: str) -> list[dict[str, Any]]:
    return [i for i in api_images(cluster.identity_url, tenant, region) if i["name"] == name]


def _run(job: Path, tmp_path: Path, report: str = "report.json") -> dict[str, Any]:
    result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / report))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    doc: dict[str, Any] = json.loads((tmp_path / report).read_text())
    return doc


def test_adoption_and_a_near_miss_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """KR2 and JP1 already hold "golden" (same bytes, made by hand, with a tag of their own) and "base" (same name,
    other bytes): golden is adopted with 0 uploads, keeps its tag and gains the provenance; base is not adopted
    (the plan says why), gets a copy of its own, and the near miss is left as it was."""
    (tenant,) = new_tenants(1)
    golden, base = b"golden-bytes" * 4096, b"base-bytes" * 4096
    create(glance_cluster, tenant, "KR1", [({"name": "golden", "tags": ["gold"]}, golden), ({"name": "base"}, base)])
    hand = {r: create(glance_cluster, tenant, r, [({"name": "golden", "tags": ["hand-made"]}, golden),
                                                  ({"name": "base"}, b"other bytes")]) for r in TARGETS}  # fmt: skip
    job = write_job(tmp_path / "job.toml", name="rg-adopt", identity_url=glance_cluster.identity_url, tenant=tenant,
                    journal=tmp_path / "state", extra='[copy]\nadopt = "exact"\n')  # fmt: skip
    plan = run_cli("plan", str(job), "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    doc = json.loads(plan.stdout)
    assert doc["counts"]["adopt"] == 2
    assert sum("not adopted for source image" in n for n in doc["notes"]) == 2
    before = _uploads(glance_cluster)
    report = _run(job, tmp_path)
    after = _uploads(glance_cluster)
    assert report["counts"]["adopted"] == 2
    assert report["counts"]["copied"] == 2  # base, next to its near miss
    assert {r: after[r] - before[r] for r in TARGETS} == dict.fromkeys(TARGETS, 1)  # base only
    for region in TARGETS:
        (adopted,) = _by_name(glance_cluster, tenant, region, "golden")
        assert adopted["id"] == hand[region][0]
        assert (adopted["imgmig_job"], adopted["imgmig_adopted"]) == ("rg-adopt", "true")
        assert set(adopted["tags"]) == {"gold", "hand-made"}
        bases = {i["id"]: i for i in _by_name(glance_cluster, tenant, region, "base")}
        assert len(bases) == 2
        assert "imgmig_job" not in bases[hand[region][1]]
    again = _run(job, tmp_path, "again.json")
    assert (again["counts"]["up_to_date"], again["bytes_written"]) == (4, 0)


def test_a_renamed_job_takes_over_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    (tenant,) = new_tenants(1)
    create(glance_cluster, tenant, "KR1", [({"name": f"img-{i}"}, bytes([i]) * 70000) for i in range(2)])
    old = write_job(tmp_path / "old.toml", name="rg-old", identity_url=glance_cluster.identity_url, tenant=tenant,
                    journal=tmp_path / "old-state")  # fmt: skip
    _run(old, tmp_path, "old.json")
    new = write_job(
        tmp_path / "new.toml",
        name="rg-new",
        identity_url=glance_cluster.identity_url,
        tenant=tenant,
        journal=tmp_path / "new-state",
        extra='previous_names = ["rg-old"]\n',
    )  # in [run], its last table
    before = _uploads(glance_cluster)
    report = _run(new, tmp_path, "new.json")
    assert (report["counts"]["adopted"], report["bytes_written"]) == (4, 0)
    assert _uploads(glance_cluster) == before
    for region in TARGETS:
        jobs = [i.get("imgmig_job") for i in api_images(glance_cluster.identity_url, tenant, region)]
        assert sorted(jobs) == ["rg-new", "rg-new"]


def _state(image: dict[str, Any]) -> tuple[str, bool, bool]:
    return image["status"], image["os_hidden"], "imgmig_retired_at" in image


def test_grace_retire_restore_and_delete_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """A deselected source's copies are retired (the PATCH and the deactivation each lose their answer once, counted
    at the proxy), survive a run inside the grace, come back with 0 uploads when the source is selected again,
    come back through ``imgmig restore`` after a second retirement, and are deleted by the first run after the
    grace."""
    grace = 15.0
    (tenant,) = new_tenants(1)
    create(glance_cluster, tenant, "KR1", [({"name": f"dr-{i}"}, bytes([65 + i]) * 70000) for i in range(2)])

    def job(names: str) -> Path:
        prune = f'[prune]\nenabled = true\nmax_delete = 10\ngrace = "{grace:g}s"\ndeactivate = true\n'
        return write_job(tmp_path / "job.toml", name="rg-grace", identity_url=glance_cluster.identity_url,
                         tenant=tenant, journal=tmp_path / "state",
                         extra=f"[select]\nnames = [{names}]\n" + prune)  # fmt: skip

    _run(job('"dr-*"'), tmp_path, "first.json")
    lost_before = glance_cluster.state()["lost_by_op"]
    for region in TARGETS:
        glance_cluster.lose_responses(region, [{"op": op, "count": None, "first_per_image": True}
                                               for op in ("patch", "deactivate")])  # fmt: skip
    try:
        retired_at = time.monotonic()
        report = _run(job('"dr-1"'), tmp_path, "retire.json")
        lost = glance_cluster.state()["lost_by_op"]
    finally:
        for region in TARGETS:
            glance_cluster.lose_responses(region, [])
    for region in TARGETS:
        for op in ("patch", "deactivate"):
            assert lost[region].get(op, 0) - lost_before[region].get(op, 0) == 1, (region, op, lost)
    assert [p.get("retired") for p in report["pruned"]] == [True, True]
    for region in TARGETS:
        (copy,) = _by_name(glance_cluster, tenant, region, "dr-0")
        assert _state(copy) == ("deactivated", True, True)
    inside = _run(job('"dr-1"'), tmp_path, "inside.json")
    assert time.monotonic() - retired_at < grace  # this run was inside the grace period
    assert inside["pruned"] == []
    assert all(len(_by_name(glance_cluster, tenant, r, "dr-0")) == 1 for r in TARGETS)
    before = _uploads(glance_cluster)
    back = _run(job('"dr-*"'), tmp_path, "back.json")
    assert (back["counts"]["restored"], back["bytes_written"]) == (2, 0)
    assert _uploads(glance_cluster) == before
    for region in TARGETS:
        (copy,) = _by_name(glance_cluster, tenant, region, "dr-0")
        assert _state(copy) == ("active", False, False)
    _run(job('"dr-1"'), tmp_path, "retire-again.json")
    restore = run_cli("restore", str(job('"dr-1"')), "dr-0")
    assert restore.returncode == 0, restore.stdout + restore.stderr[-2000:]
    for region in TARGETS:
        (copy,) = _by_name(glance_cluster, tenant, region, "dr-0")
        assert _state(copy) == ("active", False, False)
    _run(job('"dr-1"'), tmp_path, "retire-third.json")  # retired once more (its source is still not selected)
    retired_at = time.monotonic()  # after the run: its mark is no later than this
    time.sleep(max(0.0, grace - (time.monotonic() - retired_at)) + 0.5)  # the grace itself must pass
    gone = _run(job('"dr-1"'), tmp_path, "gone.json")
    assert sorted(p["target"] for p in gone["pruned"] if p.get("expired")) == sorted(TARGETS)
    assert all(_by_name(glance_cluster, tenant, r, "dr-0") == [] for r in TARGETS)


@pytest.mark.parametrize("point", ["retiring", "reactivated"])
def test_kill_9_between_the_writes_of_a_retirement_or_a_restore(
    glance_cluster: GlanceCluster, tmp_path: Path, point: str
) -> None:
    """kill -9 after a retirement's PATCH (before the deactivation), or after a restore's reactivation (before the
    marker goes): the next run completes it, and the copy ends retired (or restored) as if nothing happened."""
    (tenant,) = new_tenants(1)
    create(glance_cluster, tenant, "KR1", [({"name": f"kd-{i}"}, bytes([70 + i]) * 70000) for i in range(2)])

    def job(names: str) -> Path:
        return write_job(tmp_path / "job.toml", name="rg-kill", identity_url=glance_cluster.identity_url,
                         tenant=tenant, journal=tmp_path / "state", extra=f'[select]\nnames = [{names}]\n[prune]\n'
                         'enabled = true\nmax_delete = 10\ngrace = "1h"\ndeactivate = true\n')  # fmt: skip

    _run(job('"kd-*"'), tmp_path, "first.json")
    if point == "reactivated":
        _run(job('"kd-1"'), tmp_path, "retire.json")
    names = '"kd-1"' if point == "retiring" else '"kd-*"'
    crashed = run_cli("run", str(job(names)), "--no-progress", env={"IMGMIG_FAILPOINTS": point})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr[-2000:]
    half = [_state(c) for r in TARGETS for c in _by_name(glance_cluster, tenant, r, "kd-0")]
    # the crash came between two writes: one copy is half-way (marked but active, or active but still marked)
    assert ("active", True, True) in half, half
    _run(job(names), tmp_path, "after.json")
    want = ("deactivated", True, True) if point == "retiring" else ("active", False, False)
    for region in TARGETS:
        (copy,) = _by_name(glance_cluster, tenant, region, "kd-0")
        assert _state(copy) == want


def test_unsafe_and_mislabelled_images_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Issue 27 with real Glance as the targets and the emulator as the source (it stores anything, like an older
    cloud): a qcow2 naming a backing file and a qcow2 labelled raw (which Glance 33 itself would store) get no image
    in either target and no upload started there (counted at the proxy), refused with the inspector's words, exit 1;
    a clean qcow2, a raw image and an ISO are copied."""
    from . import images
    from .procs import emulator_process

    tenant, source_tenant = new_tenants(2)
    with emulator_process("--regions", "KR1") as emu:
        anyio.run(_create, emu.identity_url, source_tenant, "KR1", [
            ({"name": "unsafe", "disk_format": "qcow2"}, images.qcow2(backing="/etc/passwd")),
            ({"name": "liar", "disk_format": "raw"}, images.qcow2()),
            ({"name": "clean", "disk_format": "qcow2"}, images.qcow2()),
            ({"name": "plain", "disk_format": "raw"}, images.raw()),
            ({"name": "cd", "disk_format": "iso"}, images.iso()),
        ])  # fmt: skip
        lines = ['name = "rg-inspect"', "[auth.old]", f'identity_url = "{emu.identity_url}"',
                 f'tenant_id = "{source_tenant}"', 'username = "owner"', f'password_env = "{PASSWORD_ENV}"',
                 "[auth.glance]", f'identity_url = "{glance_cluster.identity_url}"', f'tenant_id = "{tenant}"',
                 'username = "owner"', f'password_env = "{PASSWORD_ENV}"', "[source]", 'auth = "old"',
                 'region = "KR1"']  # fmt: skip
        for region in TARGETS:
            lines += ["[[targets]]", 'auth = "glance"', f'region = "{region}"']
        lines += ["[run]", f'journal_dir = "{tmp_path / "state"}"']
        job = tmp_path / "job.toml"
        job.write_text("\n".join(lines) + "\n")
        before = _uploads(glance_cluster)
        result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "report.json"))
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["counts"]["refused"], report["counts"]["copied"]) == (4, 6)
    assert {r: n - before[r] for r, n in _uploads(glance_cluster).items()} == dict.fromkeys(TARGETS, 3)
    errors = {s["name"]: s["error"] for s in report["steps"] if s.get("error")}
    assert errors["unsafe"].startswith("refused: qcow2 with a backing file")
    assert errors["liar"] == "refused: content is qcow2, labelled raw"
    for region in TARGETS:
        names = sorted(i["name"] for i in api_images(glance_cluster.identity_url, tenant, region))
        assert names == ["cd", "clean", "plain"]
