"""The job's own paths, checked before any work: ``journal_dir``, ``spool_dir`` and the directory of
``metrics_file``. A path a user got wrong (a file where a directory must be, a directory under a file, no right
to write) is a job-file problem: one paragraph naming the key and the fix, exit 2, and nothing started.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import JobSpec
from pipeline.errors import JobSpecError
from pipeline.state.lock import secure_dir

__all__ = ["check_paths", "job_paths"]


def job_paths(spec: JobSpec, metrics_file: Path | None = None) -> Iterator[tuple[str, Path]]:
    """The directories a run writes in, each with the key that names it."""
    yield "run.journal_dir", spec.run.journal_dir
    if spec.transfer.spool_dir is not None:
        yield "transfer.spool_dir", spec.transfer.spool_dir
    metrics = metrics_file or spec.run.metrics_file
    if metrics is not None:
        yield ("--metrics-file" if metrics_file is not None else "run.metrics_file"), metrics.parent


def _blocker(path: Path) -> Path | None:
    """The file that stands where ``path`` or one of its parents must be a directory, or None."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def check_paths(spec: JobSpec, *, write: bool, metrics_file: Path | None = None) -> dict[str, str]:
    """Raise ``JobSpecError`` (exit 2) for a path of the job that cannot serve: a file in the way always; with
    ``write``, also a directory that cannot be created or written (each is created, 0700, and written to once).
    Returns what was checked: key -> path."""
    source = str(spec.path) if spec.path is not None else spec.name
    problems: list[tuple[str, str]] = []
    checked: dict[str, str] = {}
    for key, path in job_paths(spec, metrics_file):
        checked[key] = str(path)
        blocker = _blocker(path)
        if blocker is not None:
            where = "is a file" if blocker == path else f"is under the file {blocker}"
            problems.append((key, f"{path} {where}, not a directory: point {key.split('.')[-1]} at a directory"))
            continue
        if write:
            why = _unwritable(path, private=key != "run.metrics_file" and key != "--metrics-file")
            if why is not None:
                problems.append((key, f"cannot write in {path}: {why}; choose a directory this user may write"))
    if problems:
        raise JobSpecError(source, problems)
    return checked


def _unwritable(directory: Path, *, private: bool) -> str | None:
    """Why ``directory`` cannot be created and written (None: it can): create it (0700 when ``private``), then
    write and remove one temporary file in it."""
    try:
        if private:
            secure_dir(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".imgmig-check.")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else str(exc)
    return None
