"""The label-matching definitions cache on disk, shared by every partition that runs at the same time.

One file per service that writes definitions (``<data dir>/cache/definitions/<service>.json``, the
paper's format, see ``protocol.label_matching.DefinitionsCache``). Partitions read it, ask the LLM for
the texts it lacks, and :meth:`DefinitionsStore.merge` their new definitions into it under an exclusive
lock held across processes (``filelock``): the file is re-read under the lock, keys another partition
added meanwhile keep that partition's text (first writer wins), and the result is written atomically.
A partition then matches with the merged definitions, so two partitions running at once never fail on
each other's definitions, and each one's result is the result a re-run would give.

A store may start from ``initial`` definitions (the paper's published cache, read-only): they lie under
the file, win over it for the keys both hold, and are never written into it, so the file keeps only what
its service wrote.
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
    """The definitions file at ``path`` and its lock file (``<path>.lock``, next to it), over the
    read-only ``initial`` definitions (None: none)."""

    def __init__(self, path: str | Path, initial: DefinitionsCache | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.initial = initial

    def __repr__(self) -> str:
        over = f", initial={self.initial!r}" if self.initial is not None else ""
        return f"DefinitionsStore({str(self.path)!r}{over})"

    def _over_initial(self, stored: DefinitionsCache) -> DefinitionsCache:
        return stored if self.initial is None else self.initial.merged(stored)

    def read(self) -> DefinitionsCache:
        """The initial definitions and those stored so far (the file may not exist yet)."""
        return self._over_initial(DefinitionsCache.read(self.path))

    def merge(self, new: Mapping[str, str]) -> DefinitionsCache:
        """Add ``new`` to the file under the lock, first writer wins; returns the merged definitions
        (over the initial ones)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.lock_path, timeout=LOCK_TIMEOUT_S):
            latest = DefinitionsCache.read(self.path)
            merged = latest.merged(new)
            if len(merged) != len(latest):
                merged.write(self.path)
        return self._over_initial(merged)
