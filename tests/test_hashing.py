"""MultiHasher and the verdicts: ok, mismatch, incomplete, for streams and for what targets report."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.transfer.hashing import Expected, MultiHasher, Verdict, judge_stream, judge_target

DATA = b"imgmig" * 1000
MD5 = hashlib.md5(DATA).hexdigest()
SHA = hashlib.sha512(DATA).hexdigest()


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
        (Expected(len(DATA), MD5, "sha512", SHA), len(DATA), {"md5": MD5, "sha512": SHA}, Verdict.OK),
        (
            Expected(len(DATA), MD5, "sha512", SHA),
            len(DATA) - 1,
            {"md5": MD5, "sha512": SHA},
            Verdict.INCOMPLETE,
        ),
        (
            Expected(len(DATA), MD5, "sha512", SHA),
            len(DATA) + 1,
            {"md5": MD5, "sha512": SHA},
            Verdict.MISMATCH,
        ),
        (
            Expected(len(DATA), MD5, "sha512", SHA),
            len(DATA),
            {"md5": "0" * 32, "sha512": SHA},
            Verdict.MISMATCH,
        ),
        (Expected(len(DATA), MD5, "sha512", SHA), len(DATA), {"md5": MD5, "sha512": "0"}, Verdict.MISMATCH),
        (Expected(len(DATA), None, None, None), len(DATA), {"md5": MD5}, Verdict.OK),
    ],
    ids=["ok", "short", "long", "md5", "sha512", "no-source-digest"],
)
def test_judge_stream(expected: Expected, received: int, digests: dict[str, str], verdict: Verdict) -> None:
    """The EOF verdict compares size, md5 and the source's os_hash against what was computed."""
    assert judge_stream(expected, received, digests).verdict is verdict


def test_source_without_digests_is_marked_unverified() -> None:
    """A source that publishes no checksum yields ok, flagged as an unverified source."""
    result = judge_stream(Expected(10, None, None, None), 10, {"md5": "x"})
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
    ],
    ids=["ok", "queued", "size", "checksum", "sha512", "uncomputed-algo"],
)  # fmt: skip
def test_judge_target(reported: dict[str, object], verdict: Verdict) -> None:
    """A target is verified only when active and its size, checksum and os_hash match what was sent."""
    assert judge_target(reported, len(DATA), {"md5": MD5, "sha512": SHA}).verdict is verdict
