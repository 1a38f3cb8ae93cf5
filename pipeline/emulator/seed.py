"""Sample data sets for the emulator (``--seed demo``): a realistic source region to migrate from.

The demo seed puts about fifteen images into the first region, owned by ``DEMO_TENANT``: qcow2 and raw, sizes
from 0 bytes to 80 MiB, custom properties and tags, a shared image with members, a protected image, a
public image, an image NHN does not allow to download (``nhncloud_allow_download = "false"``), an AMI-style set
(a machine image naming its kernel and ramdisk), a volume-backed instance snapshot (no data, a
``block_device_mapping``), a queued image without data, and an image of another tenant that the demo must not see.
Large images are synthetic (generated on read), small ones are real files.
"""

from __future__ import annotations

import json
import random
from typing import Any

from .store import Caller, MemberRecord, RegionStore, iso_now
from .synthetic import QCOW2, qcow2_header

__all__ = ["DEMO_TENANT", "OTHER_TENANT", "PARTNER_TENANT", "PROVIDER_TENANT", "SEEDS", "load_seed"]

DEMO_TENANT = "6f1c2d3e4a5b46c7a8d9e0f1a2b3c4d5"
PARTNER_TENANT = "8989447062e04a818baf9e073fd04fa7"
OTHER_TENANT = "c289b99209ca4e189095cdecebbd092d"
PROVIDER_TENANT = "0b4f6e2a9c8d47e1b3a5c7d9e1f3a5b7"
MiB = 1 << 20

#: A clean qcow2 header (version 3, no backing file), so qcow2-labelled demo images are qcow2 to an inspector.
_QCOW2_HEAD = qcow2_header(64 * MiB)


def _payload(name: str, size: int, qcow2: bool) -> bytes:
    body = random.Random(name).randbytes(size)
    return (_QCOW2_HEAD + body[len(_QCOW2_HEAD) :]) if qcow2 and size >= len(_QCOW2_HEAD) else body


def _linux(distro: str, version: str, user: str) -> dict[str, Any]:
    return {"os_type": "linux", "os_distro": distro, "os_version": version, "login_username": user,
            "hypervisor_type": "qemu", "os_architecture": "x86_64"}  # fmt: skip


def seed_demo(store: RegionStore) -> None:
    """The demo data set, in ``store`` (the emulator's first region)."""
    synthetic: list[tuple[int, dict[str, Any]]] = [
        (80 * MiB, {"name": "golden-ubuntu-22.04", "disk_format": "qcow2", "tags": ["golden", "dr"],
                    "min_disk": 20, "description": "Ubuntu Server 22.04 LTS golden image",
                    "hw_disk_bus": "virtio", "hw_vif_model": "virtio",
                    **_linux("ubuntu", "22.04", "ubuntu")}),
        (24 * MiB, {"name": "golden-rocky-9", "disk_format": "qcow2", "tags": ["golden", "dr"],
                    "min_disk": 10, "min_ram": 1024, **_linux("rocky", "9.4", "rocky")}),
        (40 * MiB, {"name": "windows-2022-std", "disk_format": "raw", "tags": ["dr"], "min_disk": 50,
                    "min_ram": 4096, "os_type": "windows", "os_distro": "windows",
                    "os_version": "Server 2022 Standard", "hw_machine_type": "q35",
                    "hw_firmware_type": "uefi"}),
    ]  # fmt: skip
    for size, fields in synthetic:  # a qcow2 gets a qcow2 header (what a format inspector reads)
        kind = QCOW2 if fields["disk_format"] == "qcow2" else ""
        store.add_synthetic(DEMO_TENANT, size, kind + fields["name"], fields)
    files: list[tuple[int, dict[str, Any]]] = [
        (3 * MiB, {"name": "app-base-debian-12", "disk_format": "qcow2", "tags": ["app"],
                   **_linux("debian", "12", "debian")}),
        (1 * MiB, {"name": "tiny-cirros", "disk_format": "raw", "tags": ["test"],
                   **_linux("cirros", "0.6.2", "cirros")}),
        (0, {"name": "config-drive-empty", "disk_format": "raw", "os_type": "linux"}),
        (2 * MiB, {"name": "한국어-이미지", "disk_format": "raw", "tags": ["한글", "dr"],
                   "description": "유니코드 설명", **_linux("ubuntu", "20.04", "ubuntu")}),
        (5 * MiB, {"name": "golden-protected-baseline", "disk_format": "raw", "tags": ["golden"],
                   "protected": True, **_linux("ubuntu", "22.04", "ubuntu")}),
        (4 * MiB, {"name": "analytics-shared", "disk_format": "raw", "tags": ["team"],
                   "visibility": "shared", **_linux("centos", "7", "centos")}),
        (2 * MiB, {"name": "analytics-shared-nomembers", "disk_format": "raw", "visibility": "shared",
                   **_linux("centos", "7", "centos")}),
        # made from an instance of a licensed NHN image: NHN does not allow downloading it as it is
        (3 * MiB, {"name": "licensed-app-snapshot", "disk_format": "raw", "tags": ["dr"],
                   "nhncloud_allow_download": "false", **_linux("ubuntu", "22.04", "ubuntu")}),
    ]  # fmt: skip
    for size, fields in files:
        payload = _payload(fields["name"], size, fields["disk_format"] == "qcow2")
        rec = store.add_bytes(DEMO_TENANT, payload, fields)
        if fields["name"] == "analytics-shared":
            now = iso_now()
            rec.members[PARTNER_TENANT] = MemberRecord(PARTNER_TENANT, "accepted", now, now)
            rec.members[OTHER_TENANT] = MemberRecord(OTHER_TENANT, "pending", now, now)
    # an AMI-style set: a machine image names its kernel and ramdisk (their copies must be named in each target)
    kernel = store.add_bytes(DEMO_TENANT, _payload("kernel", MiB // 2, False),
                             {"name": "legacy-app-kernel", "disk_format": "aki", "container_format": "aki",
                              "os_type": "linux"})  # fmt: skip
    ramdisk = store.add_bytes(DEMO_TENANT, _payload("ramdisk", MiB // 2, False),
                              {"name": "legacy-app-ramdisk", "disk_format": "ari", "container_format": "ari",
                               "os_type": "linux"})  # fmt: skip
    machine = {"name": "legacy-app-machine", "disk_format": "ami", "container_format": "ami", "tags": ["dr"],
               "kernel_id": kernel.id, "ramdisk_id": ramdisk.id, **_linux("centos", "6.10", "centos")}  # fmt: skip
    store.add_bytes(DEMO_TENANT, _payload("machine", 2 * MiB, False), machine)
    # what Nova makes of a volume-backed instance: no data of its own, a block_device_mapping naming a
    # block-storage snapshot of this region (it cannot be copied as an image)
    bdm = [{"source_type": "snapshot", "destination_type": "volume", "volume_size": 40, "boot_index": 0,
            "snapshot_id": "5f1e2d3c-4b5a-4697-8a1b-2c3d4e5f6a7b", "device_name": "/dev/vda"}]  # fmt: skip
    snapshot = {"name": "db-server-volume-snapshot", "disk_format": "raw", "container_format": "bare",
                "bdm_v2": "True", "root_device_name": "/dev/vda", "block_device_mapping": json.dumps(bdm),
                **_linux("ubuntu", "22.04", "ubuntu")}  # fmt: skip
    store.add_bytes(DEMO_TENANT, b"", snapshot)
    store.add_bytes(PROVIDER_TENANT, _payload("centos", 2 * MiB, False),
                    {"name": "CentOS 6.10 (2018.10.23)", "visibility": "public", "protected": True,
                     "nhncloud_allow_download": "false", **_linux("CentOS", "6.10", "centos")})  # fmt: skip
    store.create({"name": "pending-upload", "os_type": "linux", "disk_format": "raw",
                  "container_format": "bare"}, Caller(DEMO_TENANT))  # fmt: skip
    store.add_bytes(OTHER_TENANT, _payload("secret", 1 * MiB, False),
                    {"name": "other-team-secret", **_linux("ubuntu", "22.04", "ubuntu")})  # fmt: skip


SEEDS = {"demo": seed_demo}


def load_seed(store: RegionStore, name: str) -> None:
    """Load the named data set (``demo``) into ``store``; ValueError for an unknown name."""
    try:
        SEEDS[name](store)
    except KeyError:
        raise ValueError(f"unknown seed {name!r}; known: {', '.join(SEEDS)}") from None
