"""Durable file writes: the one atomic replace that the journal's snapshot, the metrics file and the reports use.

``atomic_write`` writes a temporary file in the same directory (``.<name>.<random>.tmp``: a textfile collector
reads ``*.prom`` only, and the journal ignores it), sets its mode, writes and fsyncs it, renames it over the
target, then fsyncs the directory so the rename itself survives a power cut. A reader sees the old file or the
new one, never a part. On any failure the temporary file is removed and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write", "remove_leftovers"]

#: Filesystems that cannot fsync a directory say so with one of these; the rename is then as durable as it gets.
_NO_DIR_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


def remove_leftovers(path: Path) -> None:
    """Remove the temporary files that writes of ``path`` cut short by a crash left behind (call it while
    nobody else writes ``path``, e.g. under the job's lock)."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def atomic_write(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (bytes, or pieces of them written as they come) atomically and durably
    (file mode ``mode``). Raises OSError."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            for piece in [data] if isinstance(data, bytes) else data:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(dir_fd)
