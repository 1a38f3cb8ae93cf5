"""Disk-format inspection of uploaded bytes, as Glance 33 does with ``require_image_format_match``.

Glance wraps the upload of a ``container_format: bare`` image in oslo.utils' format inspector and, at the
end, compares what the bytes look like with the image's ``disk_format``. This module recognises the same
formats by their magic numbers (not the inspectors' deeper safety checks) and applies Glance's rule
(``glance/location.py``): a match, or a ``raw`` label, is accepted; a non-inspectable label (ami, ari, aki,
ploop) is accepted when the bytes look raw; anything else is 415 "Image disk_format X does not match
stream data Y". The same inspection gives qcow2 images their ``virtual_size``.
"""

from __future__ import annotations

__all__ = ["HEAD_BYTES", "FormatVerdict", "detect_format", "judge_format", "unsafe"]

import io
import logging
from typing import NamedTuple

#: How much of an image the detector needs (the ISO volume descriptor sits at 32 KiB + 1).
HEAD_BYTES = 32 * 1024 + 2048
#: oslo.utils' ``format_inspector.ALL_FORMATS``: formats the inspector can recognise.
INSPECTABLE = frozenset({"raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "qed", "iso", "gpt", "luks"})


class FormatVerdict(NamedTuple):
    """The outcome of inspecting an upload: accepted or not, and the virtual size it implies."""

    ok: bool
    detected: str
    virtual_size: int | None


def detect_format(head: bytes) -> str:
    """The format the first ``HEAD_BYTES`` of an image look like (``raw`` when nothing matches)."""
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith(b"conectix"):
        return "vhd"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"KDMV"):
        return "vmdk"
    if head.startswith(b"LUKS\xba\xbe"):
        return "luks"
    if len(head) >= 0x44 and int.from_bytes(head[0x40:0x44], "little") == 0xBEDA107F:
        return "vdi"
    if head[32769:32774] in (b"CD001", b"NSR02", b"NSR03"):
        return "iso"
    return "raw"


def unsafe(head: bytes, *, match: bool = True) -> str | None:
    """Why Glance 33 refuses these bytes whatever their label, or None: oslo.utils' inspector (the one Glance
    runs on every bare upload) finds them ambiguous or failing a safety check (a qcow2 backing file or external
    data file, an unsafe VMDK descriptor...). Glance answers 415 "Image failed safety checks" even with
    ``require_image_format_match`` off; bytes that match several formats are refused only with it on
    (``match``)."""
    from oslo_utils.imageutils import format_inspector as fi

    logging.getLogger(fi.__name__).disabled = True  # Glance logs these; the emulator's answer says it
    wrapper = fi.InspectWrapper(io.BytesIO(head))
    while wrapper.read(64 * 1024):
        pass
    wrapper.close()
    try:
        matches = {str(m): m for m in wrapper.formats or ()}
        if matches.keys() == {"iso", "gpt"}:
            matches = {"iso": matches["iso"]}
        if len(matches) > 1:
            return f"Multiple formats detected: {','.join(sorted(matches))}" if match else None
        for inspector in matches.values():
            inspector.safety_check()
    except fi.SafetyCheckFailed:
        return "Image failed safety checks"
    except Exception:
        return None
    return None


def judge_format(disk_format: str | None, container_format: str | None, head: bytes, size: int) -> FormatVerdict:
    """Glance's verdict on an upload of ``size`` bytes starting with ``head``."""
    if container_format != "bare":
        # Glance only inspects bare images
        return FormatVerdict(True, "raw", None)
    detected = detect_format(head)
    if detected == disk_format:
        if detected == "raw":
            return FormatVerdict(True, detected, size or None)
        if detected == "qcow2" and len(head) >= 32:
            return FormatVerdict(True, detected, int.from_bytes(head[24:32], "big") or None)
        return FormatVerdict(True, detected, None)
    if detected == "raw" and disk_format not in INSPECTABLE:
        return FormatVerdict(True, detected, None)
    if disk_format == "raw":
        # "Image claims 'raw' disk_format but is actually X": accepted, sized as plain bytes
        return FormatVerdict(True, detected, size or None)
    return FormatVerdict(False, detected, None)
