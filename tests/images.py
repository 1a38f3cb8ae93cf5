"""Disk images for the format-inspection tests, built in pure Python (qemu-img is not on every machine): each
one's verdict is checked with oslo.utils' own inspector in ``tests/test_inspection.py``, not assumed.

Sizes are at least 2 MiB, so that the inspector decides on the head (at 256 KiB) while most of the image is still
to come: a test can prove that nothing of a refused image reached a target."""

from __future__ import annotations

import struct

MiB = 1 << 20
SIZE = 2 * MiB


def _padded(head: bytes, total: int = SIZE) -> bytes:
    return head + b"\0" * (total - len(head))


def qcow2(*, backing: str | None = None, data_file: str | None = None, total: int = SIZE) -> bytes:
    """A qcow2 (version 3) header: clean, or naming a backing file (at offset 8) or an external data file
    (incompatible feature bit 2 and a 'DATA' header extension)."""
    header_length, incompatible, extensions = 104, 0, b""
    if data_file is not None:
        incompatible |= 1 << 2
        name = data_file.encode()
        extensions = struct.pack(">II", 0x44415441, len(name)) + name + b"\0" * (-len(name) % 8)
        extensions += struct.pack(">II", 0, 0)
    tail = backing.encode() if backing else b""
    offset, length = (header_length + len(extensions), len(tail)) if backing else (0, 0)
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 3, offset, length, 16, 64 * MiB, 0, 0, 0, 0, 0, 0, 0)
    header += struct.pack(">QQQII", incompatible, 0, 0, 4, header_length)
    return _padded(header + extensions + tail, total)


def vmdk_flat_extent(extent: str = 'RW 2048 FLAT "/etc/passwd" 0') -> bytes:
    """A VMDK (sparse header, descriptor at sector 1) whose descriptor names a flat extent outside the image."""
    descriptor = "\n".join(["# Disk DescriptorFile", "version=1", "CID=fffffffe", "parentCID=ffffffff",
                            'createType="monolithicFlat"', "", "# Extent description", extent, "",
                            "# The Disk Data Base", "#DDB", 'ddb.virtualHWVersion = "4"', ""]).encode()  # fmt: skip
    sectors = 1 + len(descriptor) // 512 + 1
    header = struct.pack("<4sIIQQQQIQQ", b"KDMV", 1, 3, 2048, 128, 1, sectors, 512, 0, 21)
    header += b"\0" * (512 - len(header))
    return _padded(header + descriptor + b"\0" * (sectors * 512 - len(descriptor)))


def iso(total: int = SIZE) -> bytes:
    """An ISO 9660 image: 32 KiB of system area, then a primary volume descriptor and a set terminator."""
    blocks = total // 2048
    pvd = bytearray(2048)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[80:88] = struct.pack("<I", blocks) + struct.pack(">I", blocks)
    pvd[128:132] = struct.pack("<H", 2048) + struct.pack(">H", 2048)
    end = bytearray(2048)
    end[0:7] = b"\xffCD001\x01"
    return _padded(b"\0" * 32768 + bytes(pvd) + bytes(end), total)


def raw(total: int = SIZE) -> bytes:
    """A raw disk: zeros past a short marker (random bytes could hold a partition table's 55 AA at 510)."""
    return _padded(b"raw disk image\n", total)


def vhd(total: int = SIZE) -> bytes:
    """A VHD: its 'conectix' footer, here at the start as the inspector reads it, with the disk size."""
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    footer[40:48] = struct.pack(">Q", 64 * MiB)
    footer[48:56] = struct.pack(">Q", 64 * MiB)
    return _padded(bytes(footer), total)
