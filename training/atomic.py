"""Atomic file writes: a reader (or a crash) never sees half a file, and a failed write keeps the old one."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)  # read once, at import (single-threaded), to give new files a normal mode
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, sync it, then :func:`os.replace` it onto ``path``.

    ``path`` holds either its old content or the complete new one, never a part; the temporary file is removed when
    ``write``, the sync or the rename fails, and the error propagates. The directory is created if missing.

    Args:
        path: the file to write.
        write: writes the content to the open file object it is given (text, UTF-8; bytes when ``binary``).
        binary: open the temporary file in binary mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates the file private (0600); give it a normal file's mode
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_chunks(fh: io.TextIOBase, text: str, chunk: int = 1 << 20) -> None:
    """Write ``text`` in chunks of ``chunk`` characters."""
    for start in range(0, len(text), chunk):
        fh.write(text[start:start + chunk])


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of a string (UTF-8)."""
    atomic_write(path, lambda fh: _write_chunks(fh, text))
