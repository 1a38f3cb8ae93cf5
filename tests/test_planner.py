"""The planner is pure: selection rules and the decision for each image x target, from plain data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.config import CopyOptions, Select
from pipeline.models import Image
from pipeline.plan.metadiff import MetaDiff
from pipeline.plan.planner import Action, plan_job, skip_reason
from pipeline.plan.provenance import PROV_JOB, PROV_SOURCE_ID
from pipeline.plan.selection import select_images
from pipeline.state.records import JournalState

MD5, SHA = "a" * 32, "b" * 128


def image(image_id: str = "src", **fields: Any) -> Image:
    base = {"id": image_id, "status": "active", "name": "img", "size": 10, "checksum": MD5, "os_hash_algo": "sha512",
            "os_hash_value": SHA, "visibility": "private", "owner": "me", "tags": [],
            "updated_at": "2026-06-01T00:00:00Z", "created_at": "2026-06-01T00:00:00Z"}  # fmt: skip
    return Image.from_api({**base, **fields})


def copy_of(source: Image, copy_id: str, **fields: Any) -> Image:
    return image(copy_id, **{PROV_JOB: "job", PROV_SOURCE_ID: source.id, **fields})


def no_diff(*_: Any) -> MetaDiff:
    return MetaDiff()


def some_diff(*_: Any) -> MetaDiff:
    return MetaDiff(ops=({"op": "replace", "path": "/name", "value": "x"},))


def plan_one(source: Image, copies: list[Image], *, copy: CopyOptions | None = None, diff: Any = no_diff,
             journal: JournalState | None = None) -> Any:  # fmt: skip
    plan = plan_job([source], ["KR2"], {"KR2": copies}, journal or JournalState("job"), copy or CopyOptions(), diff)
    (image_plan,) = plan.images
    (step,) = image_plan.steps
    return step


def test_no_copy_means_copy_with_bytes() -> None:
    """Without a copy in the target, the step copies the whole image."""
    step = plan_one(image(), [])
    assert (step.action, step.bytes) == (Action.COPY, 10)


def test_verified_copy_in_sync_is_skipped() -> None:
    """An active copy with the source's size and digests, metadata in sync: skip, 0 bytes."""
    src = image()
    step = plan_one(src, [copy_of(src, "c1")])
    assert (step.action, step.bytes, step.reason) == (Action.SKIP, 0, "up to date")


def test_an_image_in_sync_everywhere_holds_its_copies_not_its_steps() -> None:
    """An image whose every step is "up to date" keeps only its copies, and reads as the same steps; an image with
    one step of another kind keeps its steps."""
    from pipeline.plan.metadiff import IN_SYNC
    from pipeline.plan.planner import Step

    src, other = image(), image("src-2")
    copies = {"KR2": [copy_of(src, "c1"), copy_of(other, "c3")], "JP1": [copy_of(src, "c2")]}
    plan = plan_job([src, other], ["KR2", "JP1"], copies, JournalState("job"), CopyOptions(), lambda *_: IN_SYNC)
    in_sync, partly = plan.images
    expected = (Step("KR2", Action.SKIP, "up to date", 0, copies["KR2"][0], diff=IN_SYNC),
                Step("JP1", Action.SKIP, "up to date", 0, copies["JP1"][0], diff=IN_SYNC))  # fmt: skip
    assert not isinstance(in_sync.steps, tuple)
    assert in_sync.steps == expected
    assert (tuple(in_sync.steps), in_sync.steps[1], len(in_sync.steps)) == (expected, expected[1], 2)
    assert isinstance(partly.steps, tuple)
    assert [s.action for s in partly.steps] == [Action.SKIP, Action.COPY]


def test_drifted_metadata_is_patched_without_data() -> None:
    """A verified copy whose metadata differs: a metadata step, 0 bytes."""
    src = image()
    step = plan_one(src, [copy_of(src, "c1")], diff=some_diff)
    assert (step.action, step.bytes) == (Action.METADATA, 0)
    assert step.diff is not None
    assert not step.diff.empty


def test_queued_copy_is_resumed() -> None:
    """A copy left queued by an interrupted run is reused."""
    src = image()
    queued = copy_of(src, "c1", status="queued", size=None, checksum=None, os_hash_value=None)
    step = plan_one(src, [queued])
    assert (step.action, step.existing.id) == (Action.RESUME, "c1")


def test_changed_source_is_replaced_or_kept() -> None:
    """A copy of older data: replace (new copy, then delete the old) or keep, per on_change."""
    src = image()
    old = copy_of(src, "old", checksum="c" * 32)
    step = plan_one(src, [old])
    assert step.action is Action.REPLACE
    assert [i.id for i in step.stale] == ["old"]
    kept = plan_one(src, [old], copy=CopyOptions(on_change="keep"))
    assert kept.action is Action.SKIP
    assert "on_change" in kept.reason


def test_duplicates_and_leftovers_are_swept_keeping_the_journalled_copy() -> None:
    """Several copies: the one the journal knows is kept; the others (and partial ones) are deleted."""
    src = image()
    journal = JournalState("job")
    journal.apply({"seq": 1, "kind": "target", "image_id": src.id, "region": "KR2", "target_id": "c2"})
    copies = [copy_of(src, "c1"), copy_of(src, "c2"), copy_of(src, "c3", status="queued", checksum=None)]
    step = plan_one(src, copies, journal=journal)
    assert step.existing.id == "c2"
    assert sorted(i.id for i in step.extra) == ["c1", "c3"]


def test_target_truth_beats_the_journal() -> None:
    """The journal says done, but the copy is gone: copy again."""
    src = image()
    journal = JournalState("job")
    journal.apply({"seq": 1, "kind": "target", "image_id": src.id, "region": "KR2", "state": "done",
                   "target_id": "gone"})  # fmt: skip
    assert plan_one(src, [], journal=journal).action is Action.COPY


@pytest.mark.parametrize(
    ("fields", "copy", "reason"),
    [({"status": "queued"}, CopyOptions(), "queued"), ({"visibility": "public"}, CopyOptions(), "public"),
     ({"visibility": "community"}, CopyOptions(), "community"),
     ({"visibility": "community"}, CopyOptions(community="private"), None)],
    ids=["queued", "public", "community-skip", "community-private"],
)  # fmt: skip
def test_skip_reasons(fields: dict[str, Any], copy: CopyOptions, reason: str | None) -> None:
    """Images without data, public images and (by default) community images are skipped with a reason."""
    got = skip_reason(image(**fields), copy)
    assert (got is None) if reason is None else (reason in (got or ""))


def test_selection_rules_are_anded() -> None:
    """names (globs), tags (all), size range, properties, updated_since and owner all have to match."""
    images = [
        image("a", name="golden-ubuntu", tags=["dr", "x"], size=100, os_distro="ubuntu"),
        image("b", name="golden-centos", tags=["dr"], size=100, os_distro="centos"),
        image("c", name="scratch", tags=["dr"], size=100, os_distro="ubuntu"),
        image("d", name="golden-old", tags=["dr"], size=100, os_distro="ubuntu", updated_at="2020-01-01T00:00:00Z"),
        image("e", name="golden-big", tags=["dr"], size=10**12, os_distro="ubuntu"),
        image("f", name="golden-theirs", tags=["dr"], size=100, os_distro="ubuntu", owner="them"),
    ]
    select = Select(names=("golden-*",), tags=("dr",), size_max=10**9, properties={"os_distro": "ubuntu"},
                    updated_since=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    assert [i.id for i in select_images(images, select, owner="me")] == ["a"]


def test_plan_json_lists_action_and_bytes() -> None:
    """The plan's JSON names every step's action and bytes, with counts and totals."""
    src = image()
    plan = plan_job([src], ["KR2", "JP1"], {"KR2": [copy_of(src, "c1")], "JP1": []}, JournalState("job"),
                    CopyOptions(), no_diff)  # fmt: skip
    doc = plan.to_json()
    assert doc["counts"]["copy"] == 1
    assert doc["counts"]["skip"] == 1
    assert doc["bytes"] == 10
    assert [s["action"] for s in doc["images"][0]["steps"]] == ["skip", "copy"]
