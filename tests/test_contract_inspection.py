"""What a region does with unsafe bytes, on the emulator and on real Glance 33 (issue 27): with inspection on (Glance
33's default), a qcow2 naming a backing file is refused with 415 "Image failed safety checks" whatever its label,
and a clean qcow2 labelled raw is accepted. The emulator's region without format matching but refusing unsafe bytes
is Glance 33 with ``require_image_format_match`` off."""

from __future__ import annotations

import uuid

import pytest

from pipeline.emulator import Emulator
from pipeline.errors import UnsupportedMediaTypeError

from . import images
from .cloud import Cloud
from .test_contract_data import chunks


@pytest.mark.parametrize("label", ["qcow2", "raw"])
async def test_an_unsafe_qcow2_is_refused_whatever_its_label(cloud: Cloud, label: str) -> None:
    client = cloud.client()
    data = images.qcow2(backing="/etc/passwd")
    img = await client.create_image(cloud.image_fields(disk_format=label))
    with pytest.raises(UnsupportedMediaTypeError, match="Image failed safety checks"):
        await client.upload_image(img.id, chunks(data), size=len(data))
    assert (await client.get_image(img.id)).status == "queued"
    await client.delete_image(img.id)


async def test_a_clean_qcow2_labelled_raw_is_accepted(cloud: Cloud) -> None:
    """Glance 33 lets this format lie through (imgmig does not, unless allow_format_mismatch)."""
    client = cloud.client()
    data = images.qcow2()
    img = await client.create_image(cloud.image_fields(disk_format="raw"))
    await client.upload_image(img.id, chunks(data), size=len(data))
    assert (await client.get_image(img.id)).status == "active"
    await client.delete_image(img.id)


def test_a_region_that_only_refuses_unsafe_bytes(emulator: Emulator) -> None:
    """refuse_unsafe without format matching (Glance 33 with require_image_format_match off): the mislabelled qcow2
    is stored, the one with a backing file is refused with 415 and left queued."""
    from pipeline.emulator.fields import GlanceError
    from pipeline.emulator.store import Caller

    store = emulator.store("KR2")
    assert (store.require_format_match, store.refuse_unsafe) == (False, False)
    store.refuse_unsafe = True
    try:
        caller = Caller(uuid.uuid4().hex)

        def upload(data: bytes, label: str) -> str:
            rec = store.create(
                {"name": "x", "disk_format": label, "container_format": "bare", "os_type": "linux"}, caller
            )
            rec, writer = store.begin_upload(rec.id, caller)
            writer.write(data)
            store.finish_upload(rec, writer, ok=True)
            return rec.status

        assert upload(images.qcow2(), "raw") == "active"
        assert upload(images.raw(), "qcow2") == "active"  # a label may lie here
        with pytest.raises(GlanceError) as refused:
            upload(images.qcow2(backing="/etc/passwd"), "qcow2")
        assert (refused.value.status, refused.value.detail) == (415, "Image failed safety checks")
    finally:
        store.refuse_unsafe = False
