"""The project's two file helpers: write a file so that no reader ever sees half of it, and hash one.

Every writer of the project goes through :func:`atomic_path` (or :func:`atomic_write` for bytes and
text): Parquet assets, the response and embeddings caches, the leaderboard's text, Markdown, CSV and
PNG files. The file is written under a fresh, unique name in the target's folder, flushed to disk, then
moved onto the target with ``os.replace`` (atomic on one filesystem), so a crash or a concurrent reader
sees the old file or the new one, never a torn one, and two writers never share a temporary file.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "out" / "table.txt"
>>> atomic_write(target, "F1 0.541").read_text()
'F1 0.541'
>>> file_sha256(target)[:16]
'd7451ef2b8fc0fc5'
>>> sorted(p.name for p in target.parent.iterdir())   # no temporary file is left behind
['table.txt']
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "file_sha256"]

_CHUNK = 1 << 20


def _fresh_temporary(path: Path) -> Path:
    """A new empty file next to ``path`` (hidden, unique, with ``path``'s suffix so that writers that
    infer the format from the extension, like ``savefig``, still do). Created with the default mode
    (0666 minus the umask), which ``os.replace`` gives the target: ``mkstemp`` would make it 0600."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return candidate


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; when the block ends without an exception
    the file is flushed to disk and moved onto ``path``, otherwise it is removed. Missing parent folders
    are created.

    For writers that take a file name (``DataFrame.to_csv``, ``Figure.savefig``, ``Image.save``,
    ``pyarrow.parquet.write_table``)::

        with atomic_path(directory / "leaderboard.csv") as tmp:
            frame.to_csv(tmp, index=False)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _fresh_temporary(target)
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is encoded as UTF-8, newlines kept as given) to ``path`` atomically;
    returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks (images and archives may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
