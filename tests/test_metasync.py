"""Metadata rules as pure functions: what a copy should carry, and the minimal changes to get there."""

from __future__ import annotations

from typing import Any

from pipeline.config import CopyOptions
from pipeline.models import Image, Member
from pipeline.plan.metadiff import create_fields, desired_metadata, diff_metadata, read_only_fields
from pipeline.plan.provenance import PROV_JOB, provenance

PROV = {PROV_JOB: "job", "imgmig_source_id": "src", "imgmig_source_region": "KR1", "imgmig_source_checksum": "x"}


def image(**fields: Any) -> Image:
    base = {"id": "i", "status": "active", "name": "n", "visibility": "private", "protected": False, "tags": [],
            "min_disk": 0, "min_ram": 0}  # fmt: skip
    return Image.from_api({**base, **fields})


def test_read_only_set_comes_from_the_schema_plus_the_fallback() -> None:
    """readOnly properties in the target's schema join the built-in set; no schema -> built-in set."""
    schema = {"properties": {"checksum": {"readOnly": True}, "nhn_internal": {"readOnly": True}, "name": {}}}
    learned = read_only_fields(schema)
    assert {"checksum", "nhn_internal", "id", "owner", "os_hash_value"} <= learned
    assert "name" not in learned
    assert "nhn_internal" not in read_only_fields(None)
    assert "checksum" in read_only_fields(None)


def test_desired_properties_follow_globs_and_never_include_reserved_fields() -> None:
    """Include/exclude globs pick custom properties; read-only, os_glance_* and other jobs' provenance
    never travel; this job's provenance always does."""
    src = image(os_distro="u", hw_disk_bus="virtio", hw_rng="x", build_id="7", os_glance_importing="x",
                imgmig_job="other-job", nhn_internal="z")  # fmt: skip
    ro = read_only_fields({"properties": {"nhn_internal": {"readOnly": True}}})
    all_props = desired_metadata(src, None, CopyOptions(), PROV, ro)
    assert set(all_props.properties) == {"os_distro", "hw_disk_bus", "hw_rng", "build_id", *PROV}
    assert all_props.properties[PROV_JOB] == "job"
    picked = desired_metadata(src, None, CopyOptions(properties=("hw_*",), exclude_properties=("hw_rng",)), PROV, ro)
    assert set(picked.properties) == {"hw_disk_bus", *PROV}
    none = desired_metadata(src, None, CopyOptions(properties=False), PROV, ro)
    assert set(none.properties) == set(PROV)


def test_visibility_is_never_widened_and_members_follow_the_map() -> None:
    """shared stays shared with mapped members; visibility=false makes it private and drops members."""
    src = image(visibility="shared")
    members = [Member("i", "a", "accepted"), Member("i", "b", "pending"), Member("i", "me", "accepted")]
    desired = desired_metadata(src, members, CopyOptions(member_map={"a": "a2"}), PROV, target_tenant="me")
    assert desired.visibility == "shared"
    assert desired.members == {"a2": "accepted", "b": "pending"}  # the target tenant itself is not a member
    private = desired_metadata(src, members, CopyOptions(visibility=False), PROV)
    assert (private.visibility, private.members) == ("private", {})
    assert desired_metadata(image(visibility="public"), None, CopyOptions(), PROV).visibility == "private"


def test_create_fields_are_private_with_formats_os_type_and_provenance() -> None:
    """The minimal POST body (the fallback when a target refuses the full one): name, formats, the properties the
    target requires (NHN: os_type), private, and provenance; nothing else."""
    src = image(disk_format="qcow2", container_format="bare", os_type="linux", os_distro="u", visibility="shared")
    body = create_fields(src, desired_metadata(src, None, CopyOptions(), PROV, required=("os_type",)), minimal=True)
    assert body == {"name": "n", "disk_format": "qcow2", "container_format": "bare", "visibility": "private",
                    "os_type": "linux", **PROV}  # fmt: skip


def test_create_fields_carry_what_is_safe_on_a_queued_private_image() -> None:
    """The full POST body adds the core attributes, the custom properties and the tags, but stays private
    and unprotected (visibility and protection change only after the data is verified)."""
    src = image(disk_format="qcow2", container_format="bare", os_type="linux", os_distro="u", visibility="shared",
                protected=True, tags=["b", "a"], min_disk=2)  # fmt: skip
    body = create_fields(src, desired_metadata(src, None, CopyOptions(), PROV))
    assert body == {"name": "n", "disk_format": "qcow2", "container_format": "bare", "visibility": "private",
                    "os_type": "linux", "os_distro": "u", "min_disk": 2, "min_ram": 0, "tags": ["a", "b"],
                    **PROV}  # fmt: skip


def test_diff_is_minimal_and_removes_only_managed_keys() -> None:
    """Only differing fields produce ops; a property is removed only if this job set it before."""
    src = image(os_distro="debian", min_disk=20, tags=["a", "c"])
    desired = desired_metadata(src, None, CopyOptions(), PROV)
    target = image(os_distro="ubuntu", min_disk=20, tags=["a", "b"], dropped="x", cloud_added="y", **PROV)
    diff = diff_metadata(desired, target, [], managed=["os_distro", "dropped"])
    assert list(diff.ops) == [
        {"op": "replace", "path": "/os_distro", "value": "debian"},
        {"op": "remove", "path": "/dropped"},
    ]
    assert (diff.add_tags, diff.remove_tags) == (("c",), ("b",))
    additive = diff_metadata(desired, target, [], managed=["os_distro", "dropped"], additive=True)
    assert {"op": "remove", "path": "/dropped"} not in additive.ops
    assert additive.remove_tags == ()


def test_in_sync_copy_has_an_empty_diff_and_pointer_escaping() -> None:
    """A copy equal to its desired state has no changes; keys with / and ~ are escaped in JSON pointers."""
    src = image(**{"a/b": "1", "c~d": "2"})
    desired = desired_metadata(src, None, CopyOptions(), PROV)
    assert diff_metadata(desired, image(**{"a/b": "1", "c~d": "2"}, **PROV), []).empty
    paths = [op["path"] for op in diff_metadata(desired, image(**PROV), []).ops]
    assert "/a~1b" in paths
    assert "/c~0d" in paths


def test_provenance_names_job_source_and_checksum() -> None:
    """Provenance identifies the job, the source image, its region and the checksum copied."""
    prov = provenance("job", "KR1", image(id="s1", checksum="c" * 32))
    assert prov == {"imgmig_job": "job", "imgmig_source_id": "s1", "imgmig_source_region": "KR1",
                    "imgmig_source_checksum": "c" * 32}  # fmt: skip
