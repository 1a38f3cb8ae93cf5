"""Format truth and image safety (issue 27): every fixture checked with oslo.utils' own inspector first; then the
verdicts imgmig draws from a stream's head; then whole runs on the emulator (which stores anything): an unsafe and a
mislabelled image get no image in any target, and not a byte of them reaches one (counted at the server), while a
clean qcow2, a raw image and an ISO are copied; ``allow_format_mismatch`` lets the mislabelled one through with a
warning, never the unsafe one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from oslo_utils.imageutils import format_inspector as fi

from pipeline.emulator import Emulator
from pipeline.run.runner import plan_only
from pipeline.run.verify import verify_job
from pipeline.transfer.inspection import StreamInspector

from . import images
from .jobsetup import TARGETS, add, copies, job, run

MiB = images.MiB

#: name -> (bytes, disk_format label, what oslo.utils detects, whether its safety checks pass)
FIXTURES = {
    "clean-qcow2": (images.qcow2(), "qcow2", "qcow2", True),
    "backing-qcow2": (images.qcow2(backing="/etc/passwd"), "qcow2", "qcow2", False),
    "data-file-qcow2": (images.qcow2(data_file="/dev/sda"), "qcow2", "qcow2", False),
    "flat-vmdk": (images.vmdk_flat_extent(), "vmdk", "vmdk", False),
    "qcow2-as-raw": (images.qcow2(), "raw", "qcow2", True),
    "raw": (images.raw(), "raw", "raw", True),
    "iso": (images.iso(), "iso", "iso", True),
    "vhd": (images.vhd(), "vhd", "vhd", True),
}


@pytest.mark.parametrize("name", FIXTURES)
def test_the_fixtures_are_what_oslo_utils_says(tmp_path: Path, name: str) -> None:
    """Each fixture is checked with oslo.utils' own detection and safety checks, independently of imgmig."""
    data, _label, detected, safe = FIXTURES[name]
    path = tmp_path / name
    path.write_bytes(data)
    inspector = fi.detect_file_format(str(path))
    assert str(inspector) == detected
    if safe:
        inspector.safety_check()
    else:
        with pytest.raises(fi.SafetyCheckFailed):
            inspector.safety_check()


@pytest.mark.parametrize(("name", "expected"), [
    ("clean-qcow2", (False, None)),
    ("backing-qcow2", (True, "qcow2 with a backing file")),
    ("data-file-qcow2", (True, "qcow2 with an external data file")),
    ("flat-vmdk", (True, "vmdk with an unsafe descriptor")),
    ("qcow2-as-raw", (True, "content is qcow2, labelled raw")),
    ("raw", (False, None)),
    ("iso", (False, None)),
    ("vhd", (False, None)),
])  # fmt: skip
def test_a_streams_head_is_judged_once_it_is_decided(name: str, expected: tuple[bool, str | None]) -> None:
    """Fed in 1 MiB chunks, the inspector decides within the first one (it reads 256 KiB of it) and the verdict
    refuses exactly the unsafe and the mislabelled fixtures, in the inspector's words."""
    data, label, detected, safe = FIXTURES[name]
    inspector = StreamInspector()
    inspector.feed(data[:MiB])
    assert inspector.decided
    verdict = inspector.verdict(label, "bare")
    assert (verdict.format, verdict.safe) == (detected, safe)
    refused, words = expected
    assert verdict.refused() is refused
    if words is not None:
        assert verdict.reason is not None
        assert verdict.reason.startswith(words), verdict.reason
    assert verdict.refused(allow_mismatch=True) is (not safe)


def test_content_is_matched_with_its_label() -> None:
    """Raw data labelled iso is a mismatch; an ami label matches raw content; a raw disk with a partition table is
    raw; a short image is decided at its end; a container format other than bare judges safety only."""

    def verdict(data: bytes, label: str, container: str = "bare") -> tuple[str, bool, bool]:
        inspector = StreamInspector()
        inspector.feed(data)
        inspector.finish()
        v = inspector.verdict(label, container)
        return v.format, v.safe, v.mismatch

    assert verdict(images.raw(), "iso") == ("raw", True, True)
    assert verdict(images.raw(), "ami") == ("raw", True, False)
    assert verdict(images.qcow2(), "ami") == ("qcow2", True, True)
    mbr = bytearray(images.raw())
    mbr[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") * 2
    mbr[510:512] = b"\x55\xaa"
    assert verdict(bytes(mbr), "raw") == ("gpt", True, False)
    assert verdict(images.qcow2(total=600), "qcow2") == ("qcow2", True, False)
    assert verdict(images.qcow2(), "vmdk", "ova") == ("qcow2", True, False)
    assert verdict(images.qcow2(backing="x"), "vmdk", "ova")[1] is False
    assert verdict(b"", "raw") == ("raw", True, False)  # an empty image is raw
    # text whose first 512 bytes are ASCII, then a non-ASCII byte: oslo.utils 10.2's VMDK inspector raises on it;
    # the format is then unknown (a mismatch: refused unless allow_format_mismatch), never taken as safe raw
    assert verdict(b"A" * 600 + "é".encode() + b"B" * 5000, "raw") == ("unknown", True, True)


def _sources(emu: Emulator, tenant: str, names: list[str]) -> dict[str, str]:
    ids = {}
    for name in names:
        data, label, _detected, _safe = FIXTURES[name]
        ids[name] = add(emu, tenant, name, data=data, disk_format=label).id
    return ids


def _received(emu: Emulator) -> dict[str, int]:
    return {r: emu.regions[r].stats.bytes_received for r in TARGETS}


async def test_unsafe_and_mislabelled_images_get_nothing_in_any_target(emulator: Emulator, tmp_path: Path) -> None:
    """The unsafe qcow2s, the VMDK with a flat extent and the qcow2 labelled raw: no image in any target after the
    run (their queued copies deleted), each step refused with the inspector's words, exit 1, and not one byte of
    them received by a target (the head was held back until the verdict)."""
    tenant = uuid.uuid4().hex
    bad = ["backing-qcow2", "data-file-qcow2", "flat-vmdk", "qcow2-as-raw"]
    _sources(emulator, tenant, bad)
    before = _received(emulator)
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    assert summary.outcomes["refused"] == len(bad) * len(TARGETS)
    assert _received(emulator) == before  # nothing of a refused image reached a target
    for region in TARGETS:
        assert [r for r in emulator.store(region).images.values() if r.owner == tenant] == []
    reasons = {s.name: s.error for s in summary.steps}
    assert reasons["backing-qcow2"].startswith("refused: qcow2 with a backing file")  # type: ignore[union-attr]
    assert reasons["qcow2-as-raw"] == "refused: content is qcow2, labelled raw"
    assert "REFUSED" in summary.render() or "refused" in summary.render()
    # the verdicts are journalled with the sources' checksums: the next plan refuses them without reading a byte,
    # and the next run creates nothing (counted at the server)
    plan, _ = await plan_only(job(emulator, tmp_path, tenant))
    assert {s.action.value for _, s in plan.steps()} == {"refused"}
    assert all("found by an earlier run's inspection" in s.reason for _, s in plan.steps())
    creates = {r: emulator.regions[r].stats.requests.get("create", 0) for r in TARGETS}
    downloads = emulator.regions["KR1"].stats.requests.get("download", 0)
    again = await run(job(emulator, tmp_path, tenant))
    assert (again.exit_code, again.outcomes["refused"]) == (1, len(bad) * len(TARGETS))
    assert {r: emulator.regions[r].stats.requests.get("create", 0) for r in TARGETS} == creates
    assert emulator.regions["KR1"].stats.requests.get("download", 0) == downloads
    assert all(not [r for r in emulator.store(t).images.values() if r.owner == tenant] for t in TARGETS)


async def test_clean_qcow2_raw_and_iso_are_copied(emulator: Emulator, tmp_path: Path) -> None:
    tenant = uuid.uuid4().hex
    ids = _sources(emulator, tenant, ["clean-qcow2", "raw", "iso"])
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 0, summary.render()
    assert summary.outcomes["copied"] == 3 * len(TARGETS)
    for region in TARGETS:
        assert set(copies(emulator, region, tenant)) == set(ids.values())
    report = await verify_job(job(emulator, tmp_path, tenant))
    assert report.ok
    assert {(f.name, f.format) for f in report.findings} == {("clean-qcow2", "qcow2"), ("raw", "raw"), ("iso", "iso")}


async def test_allow_format_mismatch_copies_a_mislabelled_image_with_a_warning(
    emulator: Emulator, tmp_path: Path
) -> None:
    tenant = uuid.uuid4().hex
    ids = _sources(emulator, tenant, ["qcow2-as-raw", "backing-qcow2"])
    summary = await run(job(emulator, tmp_path, tenant, copy={"allow_format_mismatch": True}))
    assert summary.exit_code == 1  # the unsafe one is refused all the same
    assert (summary.outcomes["copied"], summary.outcomes["refused"]) == (2, 2)
    for region in TARGETS:
        assert set(copies(emulator, region, tenant)) == {ids["qcow2-as-raw"]}
    warned = [p for s in summary.steps if s.name == "qcow2-as-raw" for p in s.problems]
    assert warned == ["content is qcow2, labelled raw: copied as labelled ([copy] allow_format_mismatch)"] * 2


async def test_plan_inspect_reads_each_head_once_and_journals_the_verdicts(emulator: Emulator, tmp_path: Path) -> None:
    """plan --inspect reads the head of each source with a Range request (KR1's bytes sent, counted at the server,
    stay far below the images' size), shows every verdict, and says why a source NHN does not allow to download is
    not inspected; a second plan --inspect reads nothing (the verdicts are journalled with the checksums); and the
    run refuses the unsafe and mislabelled sources without reading them. A server that ignores Range is read up to
    the bound only, and its connection closed."""
    from pipeline.run.headcheck import plan_inspected
    from pipeline.transfer.inspection import HOLD

    tenant = uuid.uuid4().hex
    names = ["backing-qcow2", "qcow2-as-raw", "clean-qcow2", "raw", "iso"]
    ids = _sources(emulator, tenant, names)
    gated = add(emulator, tenant, "gated", data=images.raw(), nhncloud_allow_download="false")
    source = emulator.regions["KR1"].stats
    spec = job(emulator, tmp_path, tenant)
    sent, downloads = source.bytes_sent, source.requests.get("download", 0)
    _plan, _inventory, verdicts = await plan_inspected(spec)
    assert source.requests.get("download", 0) - downloads == len(names)
    assert source.bytes_sent - sent == len(names) * MiB  # the first MiB of each (they are 2 MiB): heads only
    got = {name: (verdicts[ids[name]]["format"], verdicts[ids[name]]["safe"], bool(verdicts[ids[name]].get("mismatch")))
           for name in names}  # fmt: skip
    assert got == {name: (FIXTURES[name][2], FIXTURES[name][3], name == "qcow2-as-raw") for name in names}
    assert verdicts[gated.id]["inspected"] is False
    assert "nhncloud_allow_download" in verdicts[gated.id]["reason"]
    downloads = source.requests.get("download", 0)
    _plan, _inventory, again = await plan_inspected(spec)
    assert source.requests.get("download", 0) == downloads  # a second plan --inspect reads nothing
    assert all(again[ids[name]]["read"] == 0 and again[ids[name]]["journalled"] for name in names)
    plan, _ = await plan_only(spec)
    refused = {p.image.id for p, s in plan.steps() if s.action.value == "refused"}
    assert refused == {ids["backing-qcow2"], ids["qcow2-as-raw"]}
    emulator.faults("KR1").ignore_range = True  # a server without Range: read to the bound, then closed
    try:
        other = add(emulator, tenant, "big-raw", data=images.raw(total=3 * HOLD))
        sent = source.bytes_sent
        _plan, _inventory, third = await plan_inspected(spec)
    finally:
        emulator.faults("KR1").ignore_range = False
    assert third[other.id]["format"] == "raw"
    assert third[other.id]["read"] <= HOLD
    assert source.bytes_sent - sent < 3 * HOLD


def test_plan_inspect_on_the_command_line(tmp_path: Path) -> None:
    """``imgmig plan --inspect``: one row per source with its label, content and verdict, exit 1 (a run would refuse
    one); ``--json`` has the verdicts under ``inspected``, and the second time reads nothing (``read`` 0)."""
    import json

    import anyio

    from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session

    from .jobsetup import PASSWORD, new_tenants, run_cli, write_job
    from .procs import emulator_process

    async def create(identity_url: str, tenant: str) -> None:
        async with new_session() as session:
            client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), "KR1")
            for name in ("backing-qcow2", "clean-qcow2"):
                data, label, _detected, _safe = FIXTURES[name]
                image = await client.create_image({"name": name, "disk_format": label, "container_format": "bare",
                                                   "os_type": "linux"})  # fmt: skip

                async def body(data: bytes = data) -> AsyncIterator[bytes]:
                    yield data

                await client.upload_image(image.id, body(), size=len(data))

    (tenant,) = new_tenants(1)
    with emulator_process("--regions", "KR1,KR2,JP1") as emu:
        anyio.run(create, emu.identity_url, tenant)
        job_file = write_job(tmp_path / "job.toml", name="inspect-cli", identity_url=emu.identity_url, tenant=tenant,
                             journal=tmp_path / "state")  # fmt: skip
        shown = run_cli("plan", str(job_file), "--inspect")
        again = run_cli("plan", str(job_file), "--inspect", "--json")
    assert shown.returncode == 1, shown.stdout + shown.stderr[-2000:]
    verdicts = shown.stdout.split("\n\n")[1]  # the second table: a row per source
    rows = {line.split()[1]: line for line in verdicts.splitlines()[1:]}
    assert "UNSAFE: qcow2 with a backing file" in rows["backing-qcow2"]
    assert rows["clean-qcow2"].rstrip().endswith("safe")
    doc = json.loads(again.stdout)
    assert again.returncode == 1
    assert sorted(v["format"] for v in doc["inspected"].values()) == ["qcow2", "qcow2"]
    assert {v["read"] for v in doc["inspected"].values()} == {0}


async def test_verify_deep_judges_the_bytes_it_reads_back(emulator: Emulator, tmp_path: Path) -> None:
    """Copies an older imgmig made of an unsafe qcow2 (made here on the store, with this job's provenance): verify
    finds their data equal to the source's, and ``--deep`` reads them back through the inspector: format qcow2, and
    the inspector's words as a difference."""
    tenant = uuid.uuid4().hex
    data = FIXTURES["backing-qcow2"][0]
    src = add(emulator, tenant, "old-unsafe", data=data, disk_format="qcow2")
    for region in TARGETS:
        emulator.store(region).add_bytes(tenant, data, {
            "name": "old-unsafe", "disk_format": "qcow2", "imgmig_job": "meta", "imgmig_source_id": src.id,
            "imgmig_source_region": "KR1", "imgmig_source_checksum": src.checksum})  # fmt: skip
    spec = job(emulator, tmp_path, tenant)
    shallow = await verify_job(spec)
    assert {(f.status, f.format) for f in shallow.findings} == {("ok", None)}  # nothing journalled to say
    deep = await verify_job(spec, deep=True)
    assert {(f.status, f.format) for f in deep.findings} == {("differs", "qcow2")}
    assert all(any(d.startswith("content: qcow2 with a backing file") for d in f.details) for f in deep.findings)
