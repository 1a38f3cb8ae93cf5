"""The states an image x target passes through and the outcomes it ends with: the one list that the journal,
the run summary, the metrics, ``status`` and the HTML report read. A new outcome is one line in ``OUTCOMES``
plus its meaning; everything that counts, exports or draws outcomes follows.

A journal written by a newer imgmig may hold a state this list does not know (a new outcome). It is kept and
shown as it is: every state that is not one of ``IN_PROGRESS`` is final, and a final state other than
``done`` is its own outcome. No I/O, no imports.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATA_ACTIONS",
    "IN_PROGRESS",
    "OTHER_COLOUR",
    "OUTCOMES",
    "REPORT_OUTCOMES",
    "STEP_OUTCOMES",
    "Outcome",
    "is_failure",
    "is_final",
    "step_outcome",
]

#: The planner's actions that move data (the others are metadata, skip, blocked).
DATA_ACTIONS = frozenset({"copy", "resume", "replace"})

#: The outcome of a ``done`` step whose action moves no data (the others are "up_to_date").
_DONE_BY_ACTION = {"metadata": "metadata", "adopt": "adopted", "restore": "restored"}

#: States an image x target holds before its final record: planned by a run, or receiving its bytes.
IN_PROGRESS = frozenset({"planned", "uploading"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """One way an image x target can end."""

    name: str
    meaning: str
    #: The colour the HTML report draws it in.
    colour: str
    #: False when the copy is not where the job wants it (it counts in ``imgmig_copies_out_of_sync``).
    in_sync: bool = True
    #: True when it fails the run (exit 1, a FAILED line in the summary, a warning in the log).
    failure: bool = False


#: How an image x target step of a run ends, in display order (the summary's counts, the metrics' labels).
OUTCOMES: dict[str, Outcome] = {o.name: o for o in (
    Outcome("copied", "its bytes were copied and verified, then its metadata applied", "#2e7d32"),
    Outcome("metadata", "the copy was already there; only its metadata was brought in line", "#1565c0"),
    Outcome("adopted", "an identical image already in the target (or a copy of this job under a previous name) "
            "was taken over as the copy: nothing was sent", "#00838f"),
    Outcome("restored", "the copy a grace-period prune had retired was brought back: nothing was sent", "#558b2f"),
    Outcome("up_to_date", "the copy was already there and in line: nothing was sent", "#607d8b"),
    Outcome("skipped", "left alone on purpose (public, not active, or data changed with on_change = keep)",
            "#b0bec5"),
    Outcome("failed", "the copy could not be made, verified or brought in line", "#c62828", in_sync=False,
            failure=True),
    Outcome("cancelled", "stopped mid-transfer by a signal, max_runtime or a fatal error", "#ef6c00",
            in_sync=False),
    Outcome("refused", "its content is unsafe (a qcow2 backing file or external data file, an unsafe VMDK "
            "descriptor...) or not what its disk_format says: no copy was made in any target (the format inspector's "
            "words say why)", "#ad1457", in_sync=False, failure=True),
    Outcome("vanished", "the source image was deleted during the run: no copy of it is left in the target (not a "
            "failure: the next run would not select it)", "#9575cd"),
    Outcome("not_portable", "its data does not live in the Image API (a volume-backed snapshot: a "
            "block_device_mapping that names a block-storage snapshot or volume): no copy was made", "#795548",
            in_sync=False, failure=True),
)}  # fmt: skip

#: What the HTML report shows besides: an image x target of a target unusable for the whole run, and one that
#: has no final record (still running, or the run died).
REPORT_OUTCOMES: dict[str, Outcome] = {**OUTCOMES, **{o.name: o for o in (
    Outcome("unavailable", "its target could not be used at all in this run", "#6d4c41", in_sync=False,
            failure=True),
    Outcome("unfinished", "no final record: the run is still going, or it stopped before this step ended",
            "#8e24aa", in_sync=False),
)}}  # fmt: skip

#: The step outcomes as a tuple, for zero-filled counts.
STEP_OUTCOMES = tuple(OUTCOMES)
#: How the HTML report draws an outcome this imgmig does not know (one a newer imgmig journalled).
OTHER_COLOUR = "#9e9e9e"


def is_final(state: str | None) -> bool:
    """Whether a target record with this state ends its image x target (unknown states of newer journals do)."""
    return state is not None and state not in IN_PROGRESS


def is_failure(outcome: str) -> bool:
    """Whether an image x target that ended with ``outcome`` fails the run (an unknown outcome does not)."""
    known = REPORT_OUTCOMES.get(outcome)
    return known is not None and known.failure


def step_outcome(state: str | None, action: str | None) -> str:
    """The outcome of an image x target from its state and planned action: ``done`` by the action (copied,
    metadata, up_to_date), another final state as it is (also one this imgmig does not know), else unfinished."""
    if state == "done":
        if action in DATA_ACTIONS:
            return "copied"
        return _DONE_BY_ACTION.get(action or "", "up_to_date")
    return state if state is not None and is_final(state) else "unfinished"
