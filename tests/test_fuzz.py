"""Fuzzing with hypothesis: job files, the journal loader, and API responses never crash imgmig.

- job files: any document gives either a JobSpec or one JobSpecError (exit 2) whose message is one line;
- the journal: a torn tail is ignored, damage anywhere before it is a clear error, nothing is dropped
  silently;
- API answers: malformed JSON, missing fields, wrong types, HTML, huge bodies become an ApiError for that
  call (never a KeyError or TypeError), and a job with one misbehaving image still finishes the others.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.config import parse_job
from pipeline.emulator import BodyFault, running_emulator
from pipeline.errors import ApiError, JobSpecError, JournalCorruptError
from pipeline.run.runner import RunControls, run_job
from pipeline.state.journal import LOG, Journal

from .cloud import FAST_RETRY
from .jobsetup import assert_done_means_verified

KEYS = ["name", "auth", "source", "targets", "select", "copy", "transfer", "run", "region", "tenant_id",
        "username", "password_env", "identity_url", "endpoint", "token_env", "ids", "names", "visibility",
        "tags", "owner", "size_min", "size_max", "properties", "chunk_size", "bandwidth", "retries",
        "images_in_flight", "journal_dir", "max_runtime", "member_map", "on_change", "x", "main"]  # fmt: skip
SCALARS = st.one_of(
    st.text(max_size=20), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.booleans(),
    st.sampled_from(["8MiB", "0", "200MiB/s", "50m", "KR1", "main", "PW", "private", "public", "golden-[", "*"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
BASE: dict[str, Any] = {
    "name": "fuzz",
    "auth": {
        "main": {"identity_url": "http://127.0.0.1:9/v2.0", "tenant_id": "t", "username": "u", "password_env": "PW"}
    },
    "source": {"auth": "main", "region": "KR1"},
    "targets": [{"auth": "main", "region": "KR2"}],
}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), VALUES, max_size=8))
def test_any_job_document_gives_a_spec_or_one_clear_error(doc: dict[str, Any]) -> None:
    """Random documents: either a valid JobSpec or a JobSpecError with a one-line message; nothing else."""
    error = _spec_error(doc)
    if error is not None:
        assert error.exit_code == 2
        assert "\n" not in str(error)
        assert "secret-value" not in str(error)


def _spec_error(doc: dict[str, Any]) -> JobSpecError | None:
    """The JobSpecError a document gives, or None when it is valid; any other exception propagates."""
    try:
        parse_job(doc, "fuzz.toml", {"PW": "secret-value"})
    except JobSpecError as exc:
        return exc
    return None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(BASE)), st.sampled_from(KEYS), VALUES)
def test_mutated_valid_job_gives_a_spec_or_one_clear_error(section: str, key: str, value: Any) -> None:
    """A valid job with one value replaced by anything: a spec, or one clear error naming a key path."""
    doc = json.loads(json.dumps(BASE))
    target = doc[section]
    if isinstance(target, dict):
        target[key] = value
    elif isinstance(target, list):
        target[0][key] = value
    else:
        doc[section] = value
    error = _spec_error(doc)
    if error is not None:
        assert error.problems
        assert "\n" not in str(error)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=400))
def test_any_job_file_text_exits_2_or_runs_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """Any text as a job file: `imgmig status` exits 0 or 2 with one paragraph, never a traceback."""
    job = tmp_path / "job.toml"
    job.write_text(text)
    code = main(["status", str(job)])
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("imgmig: error:")
        assert err.count("\n") == 1


# === the journal


RECORD = st.fixed_dictionaries({
    "image_id": st.sampled_from(["i1", "i2", "i3", "한"]),
    "region": st.sampled_from(["KR2", "JP1"]),
    "state": st.sampled_from(["planned", "uploading", "done", "failed"]),
    "bytes": st.integers(0, 2**40),
    "error": st.none() | st.text(max_size=30),
})  # fmt: skip


def _write(directory: Path, records: list[dict[str, Any]]) -> bytes:
    journal = Journal.open(directory, "fuzz")
    for rec in records:
        journal.record("target", **rec)
    data = (directory / LOG).read_bytes()
    import os

    os.close(journal._fd)  # crash: no snapshot
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(RECORD, min_size=1, max_size=20), st.data())
def test_torn_journal_tail_is_ignored(tmp_path: Path, records: list[dict[str, Any]], data: st.DataObject) -> None:
    """Cut the log at any byte: it loads, with exactly the records whose lines are complete."""
    directory = tmp_path / str(uuid.uuid4())
    full = _write(directory, records)
    cut = round(data.draw(st.floats(0, 1)) * len(full))  # a fraction: the length varies with timestamps
    (directory / LOG).write_bytes(full[:cut])
    complete = full[:cut].count(b"\n")
    state = Journal.read(directory, "fuzz")
    assert state.seq == complete
    reference = Journal.read(_prefix_dir(tmp_path, full, complete), "fuzz")
    assert state.images == reference.images  # every field of every image and target (the entries compare by value)


def _prefix_dir(tmp_path: Path, full: bytes, lines: int) -> Path:
    directory = tmp_path / str(uuid.uuid4())
    directory.mkdir()
    kept = b"".join(line + b"\n" for line in full.split(b"\n")[:lines])
    (directory / LOG).write_bytes(kept)
    return directory


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(RECORD, min_size=2, max_size=20), st.data())
def test_damage_before_the_tail_is_a_clear_error(
    tmp_path: Path, records: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Change any byte of a complete line (except the last newline): loading fails loudly, never silently."""
    directory = tmp_path / str(uuid.uuid4())
    full = bytearray(_write(directory, records))
    position = int(data.draw(st.floats(0, 1, exclude_max=True)) * (len(full) - 1))
    full[position] = (full[position] + data.draw(st.integers(1, 255))) % 256  # always a different byte
    (directory / LOG).write_bytes(bytes(full))
    with pytest.raises(JournalCorruptError, match="damaged"):
        Journal.read(directory, "fuzz")


# === API responses

GARBAGE = st.one_of(
    st.text(max_size=200),
    st.just("{"), st.just("[]"), st.just("null"), st.just('"image"'), st.just("{}"),
    st.just('{"id": 5, "status": "active"}'), st.just('{"id": "x", "status": 7}'),
    st.just('{"id": "x", "status": "active", "size": "big"}'), st.just('{"id": "x", "status": "active", "tags": "t"}'),
    st.just('{"id": "x", "status": "active", "protected": "yes"}'), st.just('{"images": {}}'),
    st.just('{"images": [], "next": 5}'), st.just('{"images": [1, 2]}'), st.just("<html><body>oops</body></html>"),
    st.just('{"members": "none"}'), st.just('{"members": [{"member_id": 1}]}'),
    st.builds(lambda d: json.dumps(d), st.dictionaries(st.text(max_size=5), SCALARS, max_size=6)),
)  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(body=GARBAGE, status=st.sampled_from([200, 200, 201, 400, 404, 500]),
       ctype=st.sampled_from(["application/json", "text/html", "text/plain"]))  # fmt: skip
def test_garbled_answers_become_api_errors(body: str, status: int, ctype: str) -> None:
    """Whatever the server answers, each client call returns a valid object or raises an ApiError."""

    async def scenario() -> None:
        async with running_emulator(("KR1",)) as emu, new_session() as session:
            tenant = uuid.uuid4().hex
            client = ImageClient(session, PasswordAuth(emu.identity_url, tenant, "u", Secret("p")), "KR1",
                                 retry=FAST_RETRY)  # fmt: skip
            img = await client.create_image({"name": "x", "os_type": "linux", "visibility": "shared"})
            calls = {
                "get": lambda: client.get_image(img.id),
                "list": lambda: _drain(client),
                "members": lambda: client.list_members(img.id),
                "create": lambda: client.create_image({"name": "y", "os_type": "linux"}),
                "patch": lambda: client.update_image(img.id, [{"op": "add", "path": "/a", "value": "b"}]),
            }
            for op, call in calls.items():
                emu.faults("KR1").bodies = [BodyFault(body, op=op, status=status, content_type=ctype, count=None)]
                try:
                    await call()
                except ApiError:
                    pass

    anyio.run(scenario)


async def _drain(client: ImageClient) -> list[Any]:
    return [i async for i in client.list_images(page_size=2)]


async def test_huge_body_is_refused_not_buffered(emulator: Any) -> None:
    """A 65 MiB answer to a JSON call is refused as a ProtocolError instead of being held in memory."""
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(emulator.identity_url, "t" * 32, "u", Secret("p")), "KR1",
                             retry=FAST_RETRY)  # fmt: skip
        img = await client.create_image({"name": "x", "os_type": "linux"})
        emulator.faults("KR1").bodies = [BodyFault("x" * (1 << 20), op="get", repeat=65)]
        with pytest.raises(ApiError, match="larger than"):
            await client.get_image(img.id)


@pytest.mark.parametrize(
    ("op", "body"),
    [("create", "{not json"), ("create", '{"id": 42}'), ("upload", "<html>internal error</html>"),
     ("members", '{"members": "nope"}')],
    ids=["create-malformed", "create-wrong-type", "upload-html", "members-wrong-type"],
)  # fmt: skip
async def test_one_misbehaving_image_does_not_stop_the_job(emulator: Any, tmp_path: Path, op: str, body: str) -> None:
    """Garbled answers for one image fail that image with a clear error; every other image is copied."""
    store = emulator.store("KR1")
    tenant = uuid.uuid4().hex
    fields = {"os_type": "linux", "visibility": "shared"}
    bad = store.add_bytes(tenant, b"bad" * 100, {"name": "bad", **fields})
    good = [store.add_bytes(tenant, b"ok" * 100 * (i + 1), {"name": f"good-{i}", **fields}) for i in range(3)]
    region = "KR1" if op == "members" else "KR2"
    emulator.faults(region).bodies = [
        BodyFault(body, op=op, status=200 if op != "upload" else 500, count=None,
                  image_id=bad.id if op == "members" else None)
    ]  # fmt: skip
    if op != "members":  # target-side garbage only for the bad image: serve it just to its uploads/creates
        emulator.faults(region).bodies[0].count = 6
    doc = {
        "name": "fuzzjob",
        "auth": {"m": {"identity_url": emulator.identity_url, "tenant_id": tenant, "username": "u",
                       "password_env": "PW"}},
        "source": {"auth": "m", "region": "KR1"}, "targets": [{"auth": "m", "region": "KR2"}],
        "transfer": {"images_in_flight": 1, "retries": 2}, "run": {"journal_dir": str(tmp_path / "state")},
    }  # fmt: skip
    spec = parse_job(doc, "t", {"PW": "p"})
    summary = await run_job(spec, RunControls(signals=()))
    failed = {s.name for s in summary.steps if s.state == "failed"}
    done = {s.name for s in summary.steps if s.state == "done"}
    assert summary.exit_code in (0, 1)
    if op == "members":
        assert failed == {"bad"}
        assert done == {g.name for g in good}
        (step,) = [s for s in summary.steps if s.name == "bad"]
        assert "members" in (step.error or "")
    else:
        # the garbage hits whichever copies come first; they are retried; every image ends with an outcome
        assert done | failed == {"bad"} | {g.name for g in good}
        assert all(s.error for s in summary.steps if s.state == "failed")
    checksums = {r.id: r.checksum for r in [bad, *good]}
    assert assert_done_means_verified(tmp_path / "state", "fuzzjob", checksums) == len(done)
