"""Atomic file and directory writes, and the cache directory for the default model and data (not named io: that
is the standard library's)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Where prepared assets live: ``$FEDLIT_CACHE``, else ``~/.cache/fedlit``."""
    return Path(os.environ.get("FEDLIT_CACHE", Path.home() / ".cache" / "fedlit")).expanduser()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename: readers see old or new, never half.
    ``mode``: the file's permissions (0o600 for a secret only its owner may read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it becomes ``path``, on error it is removed.

    A new ``path`` appears whole (one rename). Into an existing one each file moves by its own atomic rename,
    replacing only its namesake: files that someone else put there are never deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        else:
            for source in sorted(p for p in tmp.rglob("*") if not p.is_dir()):
                target = path / source.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
            _fsync_dir(path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
