"""The label-matching definitions cache on disk, shared by every partition that runs at the same time.

One file per service that writes definitions (``<data dir>/cache/definitions/<service>.json``, the
paper's format, see ``protocol.label_matching.DefinitionsCache``). Partitions read it, ask the LLM for
the texts it lacks, and :meth:`DefinitionsStore.merge` their new definitions into it under an exclusive
lock held across processes (``filelock``): the file is re-read under the lock, keys another partition
added meanwhile keep that partition's text (first writer wins), and the result is written atomically.
A partition then matches with the merged definitions, so two partitions running at once never fail on
each other's definitions, and each one's result is the result a re-run would give.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from ..protocol.label_matching import DefinitionsCache

__all__ = ["DefinitionsStore"]

#: Longest wait for another partition's merge (reading, merging and writing one file takes milliseconds).
LOCK_TIMEOUT_S = 120.0


class DefinitionsStore:
    """The definitions file at ``path`` and its lock file (``<path>.lock``, next to it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"DefinitionsStore({str(self.path)!r})"

    def read(self) -> DefinitionsCache:
        """The definitions stored so far (empty when the file does not exist)."""
        return DefinitionsCache.read(self.path)

    def merge(self, new: Mapping[str, str]) -> DefinitionsCache:
        """Add ``new`` to the file under the lock, first writer wins; returns the merged definitions."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.lock_path, timeout=LOCK_TIMEOUT_S):
            latest = DefinitionsCache.read(self.path)
            merged = latest.merged(new)
            if len(merged) != len(latest):
                merged.write(self.path)
            return merged
