"""Atomic file writes: a crash or a full disk mid-write never leaves a half-written file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete
    new one. On any error the temporary file is removed and the old file is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as written:
                # The mode open() would give: mkstemp makes 0600, and so do writers that put a temporary
                # file of their own in place of ours, so it is set after the write.
                os.fchmod(written.fileno(), 0o666 & ~_umask())
                os.fsync(written.fileno())
        except OSError as error:  # a full disk names no file: name the one that was being written
            raise OSError(error.errno, error.strerror, str(target)) from error
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it also sets it: put it back at once
    os.umask(mask)
    return mask
