"""A real OpenStack client (openstacksdk) works against ``imgmig emulate`` unchanged."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator

import pytest

from .procs import EmulatorProcess, emulator_process

openstack = pytest.importorskip("openstack")


@pytest.fixture(scope="module")
def emulate() -> Iterator[EmulatorProcess]:
    """`imgmig emulate` in its own process for this module."""
    with emulator_process("--regions", "KR1,KR2") as proc:
        yield proc


def connect(emulate: EmulatorProcess, tenant: str, region: str = "KR2"):  # type: ignore[no-untyped-def]
    return openstack.connect(
        auth_type="v2password",
        auth={"auth_url": emulate.identity_url, "username": f"u-{tenant[:6]}", "password": "pw",
              "tenant_id": tenant},
        region_name=region,
        load_yaml_config=False,
        load_envvars=False,
    )  # fmt: skip


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::Warning:openstack.*", "ignore::Warning:keystoneauth1.*"
)
def test_openstacksdk_full_cycle(emulate: EmulatorProcess) -> None:
    """openstacksdk discovers the endpoint, creates, uploads, lists, downloads, shares and deletes."""
    owner, partner = uuid.uuid4().hex, uuid.uuid4().hex
    conn = connect(emulate, owner)
    data = bytes(range(256)) * 1000
    try:
        image = conn.image.create_image(
            name="sdk-image", data=io.BytesIO(data), disk_format="raw", container_format="bare",
            os_type="linux", visibility="shared", wait=True,
        )  # fmt: skip
        got = conn.image.get_image(image.id)
        assert got.status == "active"
        assert got.checksum == hashlib.md5(data).hexdigest()
        assert image.id in [i.id for i in conn.image.images()]
        downloaded = conn.image.download_image(got)
        assert downloaded.content == data

        member = conn.image.add_member(image.id, member_id=partner)
        assert member.status == "pending"
        assert [m.member_id for m in conn.image.members(image.id)] == [partner]
        other = connect(emulate, partner)
        try:
            other.image.update_member(member, image.id, status="accepted")
            assert image.id in [i.id for i in other.image.images()]
        finally:
            other.close()
        conn.image.remove_member(member, image.id)
        conn.image.delete_image(image.id)
        assert conn.image.find_image(image.id) is None
    finally:
        conn.close()
