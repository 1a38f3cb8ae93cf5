"""Chaos plumbing shared by the chaos scenarios and the soak: fault schedules set through the emulator's
admin endpoint, small disks, and the four invariants every scenario checks."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .jobsetup import SourceImage, admin_images, assert_done_means_verified, check_invariants

__all__ = ["SmallDisk", "fired", "invariants", "set_faults", "small_disk", "state"]


def set_faults(admin: str, region: str, knobs: dict[str, Any]) -> None:
    """Replace a region's fault knobs (``{}`` clears them)."""
    method = "POST" if knobs else "DELETE"
    req = urllib.request.Request(f"{admin}/faults/{region}", data=json.dumps(knobs).encode() if knobs else None,
                                 method=method, headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10):
        pass


def admin_post(admin: str, path: str, doc: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{admin}/{path}", data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def state(admin: str) -> dict[str, Any]:
    """The emulator's own counts: tokens issued, faults fired, requests and uploads per region."""
    with urllib.request.urlopen(f"{admin}/state", timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def fired(admin: str) -> int:
    """How many faults the emulator has injected so far (all regions, all kinds; a lost answer counts once)."""
    return sum(n for kinds in state(admin)["faults_fired"].values() for kind, n in kinds.items()
               if not kind.startswith("lose_response_"))  # fmt: skip


def no_duplicates(admin: str, job: str, tenant: str, targets: tuple[str, ...]) -> None:
    """At any moment, at most one copy per source image and target (even after a failed run)."""
    for region in targets:
        seen: dict[str, int] = {}
        for image in admin_images(admin, region):
            if image["owner"] == tenant and image.get("imgmig_job") == job:
                seen[image["imgmig_source_id"]] = seen.get(image["imgmig_source_id"], 0) + 1
        dupes = {k: v for k, v in seen.items() if v > 1}
        assert not dupes, f"{region}: duplicate copies {dupes}"


def invariants(admin: str, job: str, sources: list[SourceImage], targets: tuple[str, ...], *, tenant: str,
               journal: Path) -> int:  # fmt: skip
    """The four checks: nothing done without verification, no duplicates, no orphans, and (called after
    the resumed run) one verified copy everywhere. Returns how many verified copies the journal holds."""
    verified = assert_done_means_verified(journal, job, {s.id: s.checksum for s in sources})
    no_duplicates(admin, job, tenant, targets)
    check_invariants(admin, job, sources, targets, tenant=tenant)
    return verified


class SmallDisk:
    """A directory that runs out of space after ``size`` bytes: a tmpfs mount when allowed (ENOSPC), else
    a per-process file size limit applied to the child (EFBIG). ``popen`` holds the extra subprocess
    arguments; ``grow()`` lifts the limit, keeping what was written."""

    def __init__(self, path: Path, size: int, *, mount: bool = True) -> None:
        self.path, self.size = path, size
        path.mkdir(parents=True, exist_ok=True)
        self.mounted = mount and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                capture_output=True, check=False).returncode == 0  # fmt: skip
        self.popen: dict[str, Any] = {} if self.mounted else {"preexec_fn": self._limit}

    def _limit(self) -> None:  # runs in the child before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))

    def grow(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=256m", str(self.path)], check=True, capture_output=True)
        self.popen = {}

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def small_disk(path: Path, size: int, *, mount: bool = True) -> Iterator[SmallDisk]:
    disk = SmallDisk(path, size, mount=mount)
    try:
        yield disk
    finally:
        disk.close()


def audit(admin: str, job: str, sources: list[SourceImage], targets: tuple[str, ...], *, tenant: str,
          journal: Path) -> dict[str, int]:  # fmt: skip
    """Count (rather than assert) what the invariants forbid, for the soak's figures: duplicate copies,
    orphans (copies of nothing selected, or tenant images without provenance), missing copies, data
    mismatches (an active copy or a journal 'done' whose digests differ from the source's), partial copies
    (queued after an interruption, legitimate until the resume) and verified copies."""
    from pipeline.state.journal import Journal

    counts = {"duplicates": 0, "orphans": 0, "missing": 0, "partial": 0, "data_mismatches": 0, "verified": 0}
    wanted = {s.id: s for s in sources}
    for region in targets:
        by_source: dict[str, list[dict[str, Any]]] = {}
        for image in admin_images(admin, region):
            if image["owner"] != tenant:
                continue
            if image.get("imgmig_job") != job or image.get("imgmig_source_id") not in wanted:
                counts["orphans"] += 1
                continue
            by_source.setdefault(image["imgmig_source_id"], []).append(image)
        for source_id, src in wanted.items():
            found = by_source.get(source_id, [])
            counts["duplicates"] += max(0, len(found) - 1)
            counts["missing"] += not found
            for image in found:
                if image["status"] != "active":
                    counts["partial"] += 1  # left queued by an interrupted upload: the resume reuses it
                elif (image["size"], image["checksum"]) != (src.size, src.checksum):
                    counts["data_mismatches"] += 1
    state = Journal.read(journal, job)
    for image_id, entry in state.images.items():
        for target in entry.targets.values():
            if target.state == "done" and target.action in ("copy", "resume", "replace"):
                evidence = target.evidence or {}
                ok = evidence.get("computed", {}).get("md5") == wanted[image_id].checksum == evidence.get(
                    "reported", {}).get("checksum")  # fmt: skip
                counts["data_mismatches"] += not ok
                counts["verified"] += ok
    return counts
