"""MultiHasher and the verdicts: ok, mismatch, incomplete, for streams and for what targets report."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.models import Content, Verdict
from pipeline.transfer.hashing import MultiHasher, judge_stream, judge_target

DATA = b"imgmig" * 1000
MD5 = hashlib.md5(DATA).hexdigest()
SHA = hashlib.sha512(DATA).hexdigest()
#: What a source states of DATA: its size, checksum and sha512.
SOURCE = Content.stated({"size": len(DATA), "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA})


def test_multihasher_computes_every_algorithm_in_one_pass() -> None:
    """md5 is always computed, plus each requested algorithm; unknown algorithms are left out."""
    hasher = MultiHasher(["sha512", "SHA256", "no-such-algo", ""])
    for i in range(0, len(DATA), 777):
        hasher.update(DATA[i : i + 777])
    assert hasher.bytes == len(DATA)
    assert hasher.hexdigests() == {"md5": MD5, "sha256": hashlib.sha256(DATA).hexdigest(), "sha512": SHA}


@pytest.mark.parametrize(
    ("expected", "received", "digests", "verdict"),
    [
        (SOURCE, len(DATA), {"md5": MD5, "sha512": SHA}, Verdict.OK),
        (SOURCE, len(DATA) - 1, {"md5": MD5, "sha512": SHA}, Verdict.INCOMPLETE),
        (SOURCE, len(DATA) + 1, {"md5": MD5, "sha512": SHA}, Verdict.MISMATCH),
        (SOURCE, len(DATA), {"md5": "0" * 32, "sha512": SHA}, Verdict.MISMATCH),
        (SOURCE, len(DATA), {"md5": MD5, "sha512": "0"}, Verdict.MISMATCH),
        (Content(len(DATA)), len(DATA), {"md5": MD5}, Verdict.OK),
    ],
    ids=["ok", "short", "long", "md5", "sha512", "no-source-digest"],
)
def test_judge_stream(expected: Content, received: int, digests: dict[str, str], verdict: Verdict) -> None:
    """The EOF verdict compares size, md5 and the source's os_hash against what was computed."""
    assert judge_stream(expected, Content(received, digests)).verdict is verdict


def test_source_without_digests_is_marked_unverified() -> None:
    """A source that publishes no checksum yields ok, flagged as an unverified source."""
    result = judge_stream(Content(10), Content(10, {"md5": "x"}))
    assert result.ok
    assert result.unverified_source


@pytest.mark.parametrize(
    ("reported", "verdict"),
    [
        ({"status": "active", "size": len(DATA), "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA},
         Verdict.OK),
        ({"status": "queued", "size": None, "checksum": None}, Verdict.INCOMPLETE),
        ({"status": "active", "size": 1, "checksum": MD5}, Verdict.MISMATCH),
        ({"status": "active", "size": len(DATA), "checksum": "0" * 32}, Verdict.MISMATCH),
        ({"status": "active", "size": len(DATA), "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": "0"},
         Verdict.MISMATCH),
        ({"status": "active", "size": len(DATA), "checksum": MD5, "os_hash_algo": "sha3_256", "os_hash_value": "0"},
         Verdict.INCOMPLETE),
        ({"status": "active", "size": len(DATA), "os_hash_algo": "sha512", "os_hash_value": SHA}, Verdict.OK),
        ({"status": "active", "size": len(DATA)}, Verdict.INCOMPLETE),
    ],
    ids=["ok", "queued", "size", "checksum", "sha512", "uncomputed-algo", "sha512-only", "no-digest"],
)  # fmt: skip
def test_judge_target(reported: dict[str, object], verdict: Verdict) -> None:
    """A target is verified only when active and its size, checksum and os_hash match what was sent."""
    assert judge_target(reported, Content(len(DATA), {"md5": MD5, "sha512": SHA})).verdict is verdict


@pytest.mark.parametrize(
    ("copy", "verdict"),
    [
        ({"size": len(DATA), "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA}, Verdict.OK),
        ({"size": len(DATA), "checksum": MD5, "os_hash_algo": "sha256", "os_hash_value": "0"}, Verdict.OK),
        ({"size": len(DATA), "checksum": MD5}, Verdict.OK),
        ({"size": len(DATA), "os_hash_algo": "SHA512", "os_hash_value": SHA}, Verdict.OK),
        ({"size": len(DATA) + 1, "checksum": MD5}, Verdict.MISMATCH),
        ({"size": len(DATA), "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": "0"}, Verdict.MISMATCH),
        ({"size": len(DATA), "checksum": None}, Verdict.INCOMPLETE),
        ({"size": len(DATA), "os_hash_algo": "sha256", "os_hash_value": "0"}, Verdict.INCOMPLETE),
    ],
    ids=["both", "other-algo", "md5-only", "algo-case", "size", "sha512", "no-digest", "nothing-in-common"],
)  # fmt: skip
def test_the_digest_rule_for_a_copy(copy: dict[str, object], verdict: Verdict) -> None:
    """``Content.held_by``, the one digest rule: a copy holds the source's bytes when the sizes are equal and every
    digest both state is equal, at least one; one that differs is a mismatch; none in common is incomplete."""
    assert SOURCE.held_by(Content.stated(copy)).verdict is verdict


def test_a_source_without_digests_is_judged_by_what_was_computed_else_by_size() -> None:
    """``source_content``: a source that states no digest is judged by the digests computed from its bytes (this
    run's, or journalled) when there are any, else by its size alone, flagged unverified."""
    from pipeline.models import Image, source_content

    bare = Image.from_api({"id": "s", "status": "active", "size": len(DATA)})
    copy = Content.stated({"size": len(DATA), "checksum": MD5})
    by_size = source_content(bare).held_by(copy)
    assert by_size.ok
    assert by_size.unverified_source
    assert source_content(bare, {"md5": MD5}).held_by(copy).ok
    assert source_content(bare, {"MD5": "0" * 32}).held_by(copy).verdict is Verdict.MISMATCH
    assert source_content(bare).held_by(Content(len(DATA) - 1)).verdict is Verdict.MISMATCH


def test_nothing_known_judges_nothing() -> None:
    """A source that states neither a size nor a digest, with nothing computed: no copy can be judged to hold it
    (incomplete), whatever the copy states."""
    from pipeline.models import Image, source_content

    blank = Image.from_api({"id": "s", "status": "active"})
    for copy in (Content(0), Content(len(DATA), {"md5": MD5})):
        assert source_content(blank).held_by(copy).verdict is Verdict.INCOMPLETE


def test_computed_digests_judge_a_copy_that_hashes_with_another_algorithm() -> None:
    """A source that states md5 + sha512 and a copy that states only a sha256 (a target hashing otherwise): no
    digest in common with what the source states, but the sha256 computed from the verified stream (journalled
    with the copy) judges it, so it is neither replaced on every run nor taken on faith."""
    from pipeline.models import Image, source_content

    sha256 = hashlib.sha256(DATA).hexdigest()
    source = Image.from_api({"id": "s", "status": "active", "size": len(DATA), "checksum": MD5,
                             "os_hash_algo": "sha512", "os_hash_value": SHA})  # fmt: skip
    copy = Content.stated({"size": len(DATA), "os_hash_algo": "sha256", "os_hash_value": sha256})
    assert source_content(source).held_by(copy).verdict is Verdict.INCOMPLETE
    assert source_content(source, {"md5": MD5, "sha256": sha256}).held_by(copy).ok
    assert source_content(source, {"md5": MD5, "sha256": "0"}).held_by(copy).verdict is Verdict.MISMATCH
    # what the source states wins over a computed value for the same algorithm
    assert source_content(source, {"md5": "0" * 32}).digests["md5"] == MD5
