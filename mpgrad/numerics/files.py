"""Files mpgrad writes: the path checked before any work, the content written atomically."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["output_path", "atomic_write"]


def output_path(path: str | os.PathLike, *, suffixes: tuple[str, ...] = (),
                overwrite: bool = True) -> str:
    """path as a file mpgrad may write, or a ValueError saying why not (checked up front).

    It must not be a directory, its folder must exist and be writable, it must end in one of
    suffixes (when given) and, unless overwrite, must not exist yet.
    """
    path = os.fspath(path)
    if not path or os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a file name" if path
                         else "an empty file name")
    if suffixes and not path.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ValueError(f"{path!r} must end in {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: {folder!r} is a file, not a folder")
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path!r}: the folder {folder!r} is not writable")
    if os.path.exists(path) and not (overwrite and os.access(path, os.W_OK)):
        raise ValueError(f"{path!r} exists" + ("" if not overwrite else " and is not writable"))
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temporary file beside path, then rename it to path: path ends
    up holding the complete new content or is left as it was (even on Ctrl-C)."""
    path = output_path(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            # the permissions of the file it replaces, else those open() would give
            os.chmod(partial, os.stat(path).st_mode & 0o7777 if os.path.exists(path)
                     else 0o666 & ~_umask())
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
