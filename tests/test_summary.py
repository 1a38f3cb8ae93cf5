"""The run summary keeps its steps packed and what it reports as counters: same answers, bounded memory."""

from __future__ import annotations

import json
import tracemalloc
import uuid

from pipeline.report.streamed import joined, json_pieces
from pipeline.report.summary import RunSummary, StepFinished


def _steps() -> list[StepFinished]:
    return [
        StepFinished("a", "ä name", "KR2", "copy", "done", bytes=100, target_id="t-a", changed=True),
        StepFinished("a", "ä name", "JP1", "copy", "failed", bytes=60, error="503 from the target"),
        StepFinished("b", None, "KR2", "metadata", "done", problems=("member x: 409",), pending_members=("p1",)),
        StepFinished("c", "c", "KR2", "skip", "done", reason="up to date"),
        StepFinished("d", "d", "JP1", "copy", "failed", error="quota full: images 10 of 10"),
        StepFinished("e", "e", "JP1", "copy", "failed", error="quota full: images 10 of 10"),
        StepFinished("f", "f", "KR2", "skip", "skipped", reason="excluded"),
    ]


def test_steps_come_back_as_they_went_in_and_counts_match() -> None:
    summary = RunSummary(job="j", run_id="r")
    for step in _steps()[:4]:
        summary.step_finished(step)
    summary.target_wide["JP1"] = "quota full: images 10 of 10"  # the condition, as the engine tells it
    for step in _steps()[4:]:
        summary.step_finished(step)
    assert summary.steps == _steps()
    assert summary.steps == _steps()  # read back again: the log is not consumed
    counts = summary.counts()
    assert (counts["copied"], counts["failed"], counts["metadata"], counts["up_to_date"], counts["skipped"]) == (
        1, 3, 1, 1, 1)  # fmt: skip
    assert summary.finished_open == 5  # every step but the two skips
    # only the steps worth a line are kept aside; the target-wide failures are counted, not kept
    assert [(s.image_id, s.target) for s in summary.notable] == [("a", "JP1"), ("b", "KR2")]
    assert summary.shared_failures == {"JP1": 2}
    text = summary.render()
    assert "FAILED ä name -> JP1: 503 from the target" in text
    assert "FAILED 2 image(s) -> JP1: quota full: images 10 of 10" in text
    assert "WARNING b -> KR2: member x: 409" in text
    assert "PENDING b -> KR2: members p1" in text
    assert (summary.outcome, summary.exit_code) == ("failed", 1)


def test_a_target_condition_told_after_its_failures_still_costs_one_line() -> None:
    summary = RunSummary(job="j", run_id="r")
    for step in _steps()[4:6]:
        summary.step_finished(step)
    summary.target_wide["JP1"] = "quota full: images 10 of 10"
    lines = [line for line in summary.render().splitlines() if "FAILED" in line]
    assert lines == ["  FAILED 2 image(s) -> JP1: quota full: images 10 of 10"]


def test_a_step_costs_tens_of_bytes_not_an_object() -> None:
    summary = RunSummary(job="j", run_id="r")
    steps = [StepFinished(str(uuid.uuid4()), f"image-{n}", "KR2", "skip", "done", reason="up to date")
             for n in range(20_000)]  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for step in steps:
            summary.step_finished(step)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / len(steps) < 64, held / len(steps)  # an object per step was about 200 bytes, its strings aside
    assert [s.image_id for s in summary.steps] == [s.image_id for s in steps]


def test_streamed_json_is_the_same_document() -> None:
    doc = {"a": 1, "empty": {}, "nested": {"x": [1, {"y": "ü"}]}, "none": None}
    lazy = {**doc, "items": (n for n in [{"k": 1}, {"k": "ä"}]), "nothing": iter(()),
            "plan": {"images": (i for i in [1, 2]), "n": 2}}  # fmt: skip
    text = b"".join(joined(json_pieces(lazy))).decode("utf-8")
    assert text.endswith("}\n")
    made = {"items": [{"k": 1}, {"k": "ä"}], "nothing": [], "plan": {"images": [1, 2], "n": 2}}
    assert json.loads(text) == {**doc, **made}
    assert json.loads("".join(json_pieces({}))) == {}
