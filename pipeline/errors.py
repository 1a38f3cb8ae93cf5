"""The whole imgmig exception tree, classified by behaviour (what the caller should do).

::

    ImgmigError                          exit_code 1 unless a subclass says otherwise
    ├── UsageError                       fatal, exit 2: bad command line, bad option value
    │   ├── JobSpecError                 exit 2: every problem in a job file, each with its dotted key path
    │   └── RegionNotFoundError          exit 2: a region that the service catalog does not list
    ├── LockHeldError                    fatal, exit 3: another run holds the job's lock
    ├── EmptySelectionError              fatal, exit 1: the selection matched no source image at all
    ├── JournalError                     fatal: the journal cannot be read or written
    │   └── JournalCorruptError          fatal: damage before the last record (a torn tail is not an error)
    ├── AuthenticationError              fatal, exit 4: a credential is refused (identity refuses the
    │                                    password, the server refuses a fixed token, or a 401 persists
    │                                    after a fresh token); names the auth profile
    ├── ApiError                         one failed call to the identity service or an Image API region
    │   ├── TransportError               retryable: no usable HTTP response
    │   │   ├── ConnectError             could not connect (refused, DNS, connect timeout)
    │   │   │   └── TLSVerificationError not retryable: the certificate does not verify
    │   │   ├── ConnectionLostError      the connection broke mid-request or mid-body
    │   │   └── ReadTimeoutError         the server stopped sending (read-idle timeout)
    │   ├── ProtocolError                the server answered something we cannot interpret
    │   └── HTTPStatusError              an HTTP error status, mapped by code:
    │       ├── BadRequestError          400
    │       ├── UnauthorizedError        401 as such: the client refreshes the token and tries once more
    │       ├── TokenRejectedError       401 on a request that cannot be replayed (an upload): the
    │       │                            token was dropped, so the next attempt gets a fresh one
    │       ├── ForbiddenError           403
    │       ├── NotFoundError            404
    │       ├── RequestTimeoutError      408 (retryable)
    │       ├── ConflictError            409
    │       ├── PayloadTooLargeError     413
    │       ├── UnsupportedMediaTypeError 415
    │       ├── RangeNotSatisfiableError 416
    │       ├── RateLimitedError         429 (retryable, honours Retry-After)
    │       └── ServerError              5xx (retryable, honours Retry-After)
    └── TransferError                    a copy of one image to one target failed
        ├── SourceReadError              blame the source: the download broke or lied
        │   ├── SourceForbiddenError     not retryable: the source refused the download (403)
        │   └── SourceVanishedError      not retryable: the source image was deleted during the run
        ├── TargetWriteError             blame the target: the upload or its verification failed
        └── VerificationError            bytes or digests do not match (never marked done)

No fatal error derives from ``ApiError`` or ``TransferError``: code that handles one failed call or one
failed copy (``except ApiError``) can never swallow a dead credential, a full journal disk or a lock held
by another run. Those stop the job cleanly with their own exit code.

Every ``ApiError`` carries ``region``, ``image_id``, ``status``, ``request_id`` and the server's own
``message`` so an operator can quote it to the cloud's support. No secret is ever put into an error:
messages are built from response bodies and request paths, never from headers or credentials.
"""

from __future__ import annotations

import enum
import re
from typing import Any, ClassVar

__all__ = [
    "EXIT_CODES",
    "OUTCOME_EXIT_CODES",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "ConnectionLostError",
    "EmptySelectionError",
    "ExitCode",
    "ForbiddenError",
    "HTTPStatusError",
    "ImgmigError",
    "JobSpecError",
    "JournalCorruptError",
    "JournalError",
    "LockHeldError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RangeNotSatisfiableError",
    "RateLimitedError",
    "ReadTimeoutError",
    "RegionNotFoundError",
    "RequestTimeoutError",
    "ServerError",
    "SourceForbiddenError",
    "SourceReadError",
    "SourceVanishedError",
    "TLSVerificationError",
    "TargetWriteError",
    "TokenRejectedError",
    "TransferError",
    "TransportError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "UsageError",
    "VerificationError",
    "error_for_status",
    "first_error",
    "quota_resource",
    "run_state",
]


class ExitCode(enum.IntEnum):
    """Every exit code of ``imgmig`` (the product contract; deploy manifests are tested against it)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    LOCKED = 3
    AUTH = 4
    PARKED = 10
    SIGINT = 130
    SIGTERM = 143


#: What each exit code means, for ``--help``, the README and the Kubernetes podFailurePolicy.
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "all done",
    ExitCode.FAILED: "some image or target failed (the rest done)",
    ExitCode.USAGE: "usage or job-file error",
    ExitCode.LOCKED: "another run holds the job's lock",
    ExitCode.AUTH: "authentication failed (at start or mid-run)",
    ExitCode.PARKED: "stopped at max_runtime with work left (resumable)",
    ExitCode.SIGINT: "interrupted by SIGINT (state saved, the next run resumes)",
    ExitCode.SIGTERM: "interrupted by SIGTERM (state saved, the next run resumes)",
}

#: The exit code of a run by its outcome (``RunSummary.outcome``); "interrupted" takes its signal's code
#: (``ExitCode[name]``) and "fatal" its error's ``exit_code``.
OUTCOME_EXIT_CODES: dict[str, ExitCode] = {"ok": ExitCode.OK, "failed": ExitCode.FAILED, "parked": ExitCode.PARKED}


def run_state(exit_code: int | None) -> str:
    """How a finished run ended, in one word from its exit code: done, parked (resumable), interrupted, failed;
    ``unfinished`` without one (the run is going, or it died before recording its end)."""
    if exit_code is None:
        return "unfinished"
    words: dict[int, str] = {ExitCode.OK: "done", ExitCode.PARKED: "parked", ExitCode.SIGINT: "interrupted",
             ExitCode.SIGTERM: "interrupted"}  # fmt: skip
    return words.get(exit_code, "failed")


class ImgmigError(Exception):
    """Base of every error imgmig raises on purpose."""

    exit_code: ClassVar[int] = 1
    #: Set by the runner on a fatal error: what the run did before it stopped.
    summary: Any = None
    #: A retryable error may succeed if the same request is sent again.
    retryable: ClassVar[bool] = False
    #: A fatal error stops the whole job (cleanly) instead of failing one image.
    fatal: ClassVar[bool] = False


class UsageError(ImgmigError):
    """The user asked for something impossible: fix the command line or the job file."""

    exit_code: ClassVar[int] = 2
    fatal: ClassVar[bool] = True


class JobSpecError(UsageError):
    """A job file has problems; ``problems`` lists each as (dotted key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "; ".join(f"{path}: {msg}" if path else msg for path, msg in problems)
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"job file {source} has {count} {noun}: {lines}.")


class RegionNotFoundError(UsageError):
    """The service catalog has no image endpoint for the requested region."""

    def __init__(self, region: str, available: list[str]) -> None:
        self.region = region
        #: Sorted: a catalog's order is the identity service's (real Keystone's changed between runs).
        self.available = sorted(available)
        have = ", ".join(self.available) or "none"
        super().__init__(
            f"region {region!r} has no image endpoint in the service catalog (available: {have}); "
            "check the region name in the job file"
        )


class LockHeldError(ImgmigError):
    """Another run of the same job holds its lock."""

    exit_code: ClassVar[int] = 3
    fatal: ClassVar[bool] = True

    def __init__(self, job: str, pid: int | None, started: str | None, path: str) -> None:
        self.job = job
        self.pid = pid
        self.started = started
        holder = f"PID {pid}" if pid else "another process"
        since = f", started {started}" if started else ""
        super().__init__(
            f"job {job!r} is already running ({holder}{since}); lock file {path}. "
            "Wait for it to finish; a lock whose holder has died is taken over automatically"
        )


class EmptySelectionError(ImgmigError):
    """The job's selection matched no source image at all: a run that would copy nothing is not green."""

    fatal: ClassVar[bool] = True

    def __init__(self, region: str, filters: str, near: list[str]) -> None:
        self.region = region
        hints = "; ".join(near)
        super().__init__(
            f"selection matched no image in {region} ({filters}): {hints}. Check [select] and the source profile's "
            "tenant; a mirror that may legitimately be empty sets [select] allow_empty = true"
        )


class JournalError(ImgmigError):
    """The journal cannot be read or written; the job stops with its state intact."""

    fatal: ClassVar[bool] = True


class JournalCorruptError(JournalError):
    """The journal is damaged before its last record, so state would be lost silently."""


class _CallError(ImgmigError):
    """An error tied to one request: where it went, what the server said, and its request id."""

    def __init__(
        self,
        message: str,
        *,
        region: str | None = None,
        image_id: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.region = region
        self.image_id = image_id
        self.status = status
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.method and self.path:
            where.append(f"{self.method} {self.path}")
        if self.region:
            where.append(f"region {self.region}")
        if self.image_id:
            where.append(f"image {self.image_id}")
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        if self.request_id:
            where.append(f"request {self.request_id}")
        ctx = f" ({', '.join(where)})" if where else ""
        return f"{self.message}{ctx}"


class AuthenticationError(_CallError):
    """A credential is refused: the job stops at once (exit 4) instead of failing image after image.

    Deliberately not an ``ApiError``: per-call and per-image handlers catch ``ApiError``, and a dead
    credential must never be mistaken for one image's failure and retried against.
    """

    exit_code: ClassVar[int] = 4
    fatal: ClassVar[bool] = True


class ApiError(_CallError):
    """One call to the identity service or to an Image API region failed."""


class TransportError(ApiError):
    """No usable HTTP response: the request may be sent again."""

    retryable: ClassVar[bool] = True


class ConnectError(TransportError):
    """Could not connect to the server."""


class ConnectionLostError(TransportError):
    """The connection broke in the middle of a request or a body."""


class TLSVerificationError(ConnectError):
    """The server's TLS certificate did not verify; set ``ca_bundle`` rather than retrying."""

    retryable: ClassVar[bool] = False


class ReadTimeoutError(TransportError):
    """The server stopped sending for longer than the read-idle timeout."""


class ProtocolError(ApiError):
    """The server's answer could not be interpreted (malformed JSON, missing or mistyped fields)."""


class HTTPStatusError(ApiError):
    """An HTTP error status; subclasses map specific codes."""


class BadRequestError(HTTPStatusError):
    """400: the server rejected the request as malformed."""


class UnauthorizedError(HTTPStatusError):
    """401 as the server sent it; the client refreshes the token once, then raises AuthenticationError."""


class TokenRejectedError(HTTPStatusError):
    """401 on a request that could not be replayed; the token was dropped and a new attempt may pass."""

    retryable: ClassVar[bool] = True


class ForbiddenError(HTTPStatusError):
    """403: not allowed (read-only attribute, protected image, policy)."""


class NotFoundError(HTTPStatusError):
    """404: no such image, member or tag, or it is not visible to this tenant."""


class RequestTimeoutError(HTTPStatusError):
    """408: the server timed out waiting for the request."""

    retryable: ClassVar[bool] = True


class ConflictError(HTTPStatusError):
    """409: the image is in a state that does not allow this (duplicate, wrong status)."""


class PayloadTooLargeError(HTTPStatusError):
    """413: a quota (properties, tags, members, size) would be exceeded."""


class UnsupportedMediaTypeError(HTTPStatusError):
    """415: wrong Content-Type, or data that does not match the disk format."""


class RangeNotSatisfiableError(HTTPStatusError):
    """416: the requested byte range is outside the image."""


class RateLimitedError(HTTPStatusError):
    """429: slow down; ``retry_after`` says for how long when the server tells."""

    retryable: ClassVar[bool] = True


class ServerError(HTTPStatusError):
    """5xx: the server failed; the same request may succeed later."""

    retryable: ClassVar[bool] = True


_STATUS_CLASSES: dict[int, type[HTTPStatusError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 408: RequestTimeoutError,
    409: ConflictError, 413: PayloadTooLargeError, 415: UnsupportedMediaTypeError, 416: RangeNotSatisfiableError,
    429: RateLimitedError,
}  # fmt: skip


def error_for_status(status: int) -> type[HTTPStatusError]:
    """Return the exception class for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status, HTTPStatusError)


class TransferError(ImgmigError):
    """Copying one image to one target failed; the job records it and goes on."""

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, region: str | None = None, image_id: str | None = None) -> None:
        self.region = region
        self.image_id = image_id
        super().__init__(message)


class SourceReadError(TransferError):
    """The source download failed or delivered bytes that do not match its digests."""


class SourceForbiddenError(SourceReadError):
    """The source refused the download (403): retrying cannot help; the message says what to change."""

    retryable: ClassVar[bool] = False


class SourceVanishedError(SourceReadError):
    """The source image no longer exists (a 404, confirmed by a GET): deleted during the run. Nothing to retry."""

    retryable: ClassVar[bool] = False


class FormatRefusedError(TransferError):
    """The inspector found the image's head unsafe, or not what its ``disk_format`` says: no target gets a copy of
    it, and another read cannot change that."""

    retryable: ClassVar[bool] = False


class TargetWriteError(TransferError):
    """A target's upload failed, or the target reported digests that do not match."""


class VerificationError(TransferError):
    """Bytes or digests do not match; the copy is never marked done."""


#: What Glance names in a 413 of a full quota: its unified limits ("Project ... is over a limit for [Resource
#: image_count_total is over limit of ..."), and the legacy storage quota ("... exceeds the quota", "Image exceeds
#: the storage quota"). Any other 413 (128 properties or tags, an image size cap) concerns one image only.
_QUOTA_RESOURCE = re.compile(r"\b(image_count_total|image_count_uploading|image_size_total|image_stage_total)\b")
_STORAGE_QUOTA = re.compile(r"exceeds the (?:storage )?quota", re.IGNORECASE)


def quota_resource(exc: BaseException) -> str | None:
    """The quota a 413 says is full (``image_count_total``, ..., or ``storage quota``), or None when ``exc`` is not
    a quota refusal: a full quota stops a whole target, any other 413 one image."""
    if not isinstance(exc, PayloadTooLargeError):
        return None
    found = _QUOTA_RESOURCE.search(exc.message)
    if found is not None:
        return found.group(1)
    return "storage quota" if _STORAGE_QUOTA.search(exc.message) else None


def first_error(exc: BaseException) -> BaseException:
    """The error that explains ``exc``: from an exception group, the first fatal ImgmigError, else the
    first ImgmigError, else the first other exception (task groups wrap errors in groups)."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(exc)
    ours = [leaf for leaf in leaves if isinstance(leaf, ImgmigError)]
    fatal = [leaf for leaf in ours if leaf.fatal]
    return (fatal or ours or leaves or [exc])[0]
