"""LLM definitions for label matching: what gets defined, the requests, and the cache file
(docs/protocol/evaluation.md §1.5, gotchas §9.6–9.9).

Flow (the client sends the requests; nothing here touches the network)::

    items    = definition_items(label_sets, settings)       # unique by cache key, labels first
    cache    = DefinitionsCache.read(path)                   # flat JSON object key → text
    requests = definition_requests(cache.missing(items), settings)
    ...client: one chat completion per request (system + user message, settings.llm)...
    cache    = cache.updated({request.item.cache_key: completion_text, ...})
    cache.write(path)                                        # when settings.definitions_write

The completion text is stored verbatim (no parsing). The reference retries a failed completion
indefinitely; the client decides how long to keep trying.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlm_gist_dagster.protocol.settings import CompletionParams, LabelMatchingSettings

from .label_sets import LabelSet, matching_targets, partition_label_sets
from .normalization import cache_key, normalize_description_for_definition, strip_label_number
from .prompts import DefinitionPrompt, definition_prompt
from .settings import SettingsLike, as_settings


class DefinitionsCacheError(ValueError):
    """The definitions cache file cannot be read. The message names the file and the key at fault."""


class MissingDefinitionsError(KeyError):
    """Definitions needed for scoring are not available. ``keys`` lists the missing cache keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        shown = ", ".join(repr(k) for k in self.keys[:10]) + (" …" if len(self.keys) > 10 else "")
        super().__init__(f"{len(self.keys)} definition(s) missing from the cache: {shown}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class DefinitionItem:
    """A text to define: ``is_item`` marks a JSON item (label with description)."""

    text: str
    cache_key: str
    is_item: bool


@functools.cache
def _default_settings() -> LabelMatchingSettings:
    return LabelMatchingSettings()


def detection_definition_item(
    label: str, description: str | None, settings: SettingsLike | None = None
) -> tuple[DefinitionItem, tuple[str, ...]]:
    """The definition item of one detection and the reference's warnings for it (docs/protocol/evaluation.md §1.5).

    * No description: the plain label after ``[_]?\\d+$`` removal and whitespace collapse. Unlike
      everywhere else this form has **no** fallback: a label ``"2"`` becomes the empty text (reference
      behaviour, kept).
    * With description: ``json.dumps({key_name: L, key_description: D}, indent=4)`` with the default
      ``ensure_ascii=True``, where L and D are the normalised label and description, or the raw ones when
      normalisation empties them (a warning each).

    >>> item, _ = detection_definition_item("A ripe banana", "it is not yet ripe")
    >>> item.cache_key
    'objectnamearipebananadescriptionitisnotyetripe'
    """
    # Only the item's key names and indent are read: the paper's module defaults when None.
    settings = _default_settings() if settings is None else as_settings(settings)
    label_stripped = strip_label_number(label)
    if description is None:
        return DefinitionItem(label_stripped, cache_key(label_stripped), False), ()
    warnings: list[str] = []
    if label_stripped == "":
        warnings.append(
            f"Using original label '{label}' to generate definition after normalization "
            "yielded an empty string."
        )
    description_norm = normalize_description_for_definition(description)
    if description_norm.fallback:
        warnings.append(
            f"Using original description '{description}' to generate definition after normalization "
            "yielded an empty string."
        )
    item = {
        settings.definition_item_key_name: label_stripped or label,
        settings.definition_item_key_description: description_norm.value,
    }
    text = json.dumps(item, indent=settings.definition_item_indent)
    return DefinitionItem(text, cache_key(text), True), tuple(warnings)


def target_definition_item(target: str) -> DefinitionItem:
    """Targets are defined as their raw string, as plain (non-item) texts."""
    return DefinitionItem(target, cache_key(target), False)


def definition_items(label_sets: Iterable[LabelSet], settings: SettingsLike) -> list[DefinitionItem]:
    """Every text that needs a definition, unique by cache key, first occurrence kept (docs/protocol/evaluation.md §1.5).

    Order: with ``define_labels`` every detection of every matched set (sets in input order), then with
    ``define_targets`` every matching target. A label item and a target (or two targets) with the same key
    share one definition. Skipped sets contribute nothing.
    """
    settings = as_settings(settings)
    active, _ = partition_label_sets(label_sets, settings)
    candidates: list[DefinitionItem] = []
    if settings.define_labels:
        for label_set in active:
            for label, description in zip(label_set.labels, label_set.descriptions, strict=True):
                candidates.append(detection_definition_item(label, description, settings)[0])
    if settings.define_targets:
        candidates.extend(target_definition_item(t) for t in matching_targets(active, settings))
    unique: dict[str, DefinitionItem] = {}
    for item in candidates:
        unique.setdefault(item.cache_key, item)
    return list(unique.values())


@dataclass(frozen=True)
class DefinitionRequest:
    """One definition to generate: a fresh conversation of system + user message, sent with the
    completion parameters ``llm`` (the settings' ``llm`` block: gpt-4o-2024-11-20, T 1.0, max 2000 …)."""

    item: DefinitionItem
    system_prompt: str
    prompt: DefinitionPrompt
    llm: CompletionParams

    @property
    def messages(self) -> list[dict[str, str]]:
        """OpenAI-style chat messages (the reference resets the context before the system prompt)."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.prompt.text},
        ]


def definition_request(item: DefinitionItem, settings: SettingsLike) -> DefinitionRequest:
    """The request for one item, with the prompt selected as in the paper unless the swap is fixed."""
    settings = as_settings(settings)
    prompt = definition_prompt(
        item.text,
        item.is_item,
        settings.fix_definition_prompt_swap,
        prompt_item=settings.definition_prompt_item,
        prompt_label=settings.definition_prompt_label,
    )
    return DefinitionRequest(item, settings.definition_prompt_system, prompt, settings.llm)


def definition_requests(items: Iterable[DefinitionItem], settings: SettingsLike) -> list[DefinitionRequest]:
    """Requests for ``items`` (typically ``cache.missing(definition_items(...))``), in order."""
    settings = as_settings(settings)
    return [definition_request(item, settings) for item in items]


class DefinitionsCache(Mapping[str, str]):
    """The definitions cache: a flat JSON object mapping cache key → definition text (docs/protocol/evaluation.md §1.5).

    Immutable; :meth:`updated` returns a new cache. The published file (357 entries, the keys of the 80
    COCO and 277 augmented targets) is read as is, and :meth:`write` reproduces its format exactly:
    2-space indent, UTF-8 without ``\\u`` escapes, no trailing newline, insertion order kept (existing keys
    first, new keys appended), written atomically (temporary file in the same folder, then rename).
    """

    def __init__(self, entries: Mapping[str, str] | None = None, *, source: str = "definitions") -> None:
        entries = {} if entries is None else entries
        if not isinstance(entries, Mapping):
            raise DefinitionsCacheError(f"{source}: expected a JSON object, got {type(entries).__name__}")
        for k, v in entries.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise DefinitionsCacheError(
                    f"{source}: entry {k!r} must map a string key to a string definition"
                )
        self._entries: dict[str, str] = dict(entries)
        self.source = source

    @classmethod
    def read(cls, path: str | os.PathLike[str], *, missing_ok: bool = True) -> DefinitionsCache:
        """Read a cache file. A missing file is an empty cache when ``missing_ok`` (as in the paper)."""
        path = Path(path)
        if not path.exists():
            if missing_ok:
                return cls(source=str(path))
            raise DefinitionsCacheError(f"{path}: definitions file does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DefinitionsCacheError(f"{path}: not valid UTF-8 JSON ({error})") from None
        return cls(data, source=str(path))

    def __getitem__(self, key: str) -> str:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DefinitionsCache({len(self)} entries from {self.source!r})"

    def missing(self, items: Iterable[DefinitionItem]) -> list[DefinitionItem]:
        """The items whose cache key has no definition yet, in order."""
        return [item for item in items if item.cache_key not in self._entries]

    def updated(self, new: Mapping[str, str]) -> DefinitionsCache:
        """A cache with ``new`` definitions appended. Replacing an existing key is an error (the reference
        only ever generates missing keys)."""
        clash = [k for k in new if k in self._entries and self._entries[k] != new[k]]
        if clash:
            raise DefinitionsCacheError(
                f"{self.source}: refusing to overwrite existing definitions {clash[:5]!r}"
            )
        merged = dict(self._entries)
        merged.update(new)
        return DefinitionsCache(merged, source=self.source)

    def merged(self, new: Mapping[str, str]) -> DefinitionsCache:
        """A cache with the keys of ``new`` it lacks appended; a key it already has keeps its text (first
        writer wins). What a partition merges into the shared file, where another partition may have
        defined the same text meanwhile.

        >>> DefinitionsCache({"cup": "A cup."}).merged({"cup": "Another cup.", "mug": "A mug."})["cup"]
        'A cup.'
        """
        merged = dict(self._entries)
        for key, text in new.items():
            merged.setdefault(key, text)
        return DefinitionsCache(merged, source=self.source)

    def to_json(self) -> str:
        """The file text: 2-space indent, non-ASCII kept, no trailing newline (as nimbro_utils/orjson)."""
        return json.dumps(self._entries, indent=2, ensure_ascii=False)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the whole cache atomically (temporary file in the same folder, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise


def lookup_definitions(definitions: Mapping[str, str], keys: Iterable[str]) -> list[str]:
    """The definitions for ``keys`` in order; raise :class:`MissingDefinitionsError` listing every gap."""
    keys = list(keys)
    missing = list(dict.fromkeys(k for k in keys if k not in definitions))
    if missing:
        raise MissingDefinitionsError(missing)
    return [definitions[k] for k in keys]
