"""The embedding batch of label matching and the table its vectors come back in (docs/protocol/evaluation.md §1.6,
docs/protocol/pipeline.md §2.3).

**Who transforms what.** The reference's embedding node replaced every ``"\\n"`` with a space and refused
empty texts before embedding (and cached per transformed text). Here *both* happen in the batch
builder: :func:`embedding_batch` returns wire-ready texts (via :func:`embedding_input`) and raises
:class:`EmptyEmbeddingTextError` naming the source of an empty text. The client sends the list verbatim
(OpenAI: ``{"input": texts, "model": …, "encoding_format": "float"}``) and hands the vectors back in input
order. :class:`EmbeddingTable` indexes vectors by that same wire text and scoring looks every text up
through :func:`embedding_input` too, so the order of the batch never matters for the scores.

**Batch order** (one request per call; the group sizes are what the reference logs):

1. unique ``label_norm(label)`` values;
2. unique ``desc_norm_for_embedding(description)`` values (descriptions that are not None);
3. unique ``definition_norm(label definition)`` values (with ``define_labels``);
4. every matching target (raw strings, already unique);
5. unique raw target definitions (with ``define_targets``).

Uniqueness is within a group, on the text before the newline replacement, exactly as in the reference; a
text may appear in two groups (e.g. a label ``banana`` and the target ``banana``). Within a group the
reference's order is Python ``set`` order (hash-dependent, differs between runs); ours is first
occurrence, which is deterministic. Neither affects any score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .definitions import detection_definition_item, lookup_definitions, target_definition_item
from .label_sets import LabelSet, matching_targets, partition_label_sets
from .normalization import normalize_definition, normalize_description_for_embedding, normalize_label
from .settings import SettingsLike, as_settings


class EmptyEmbeddingTextError(ValueError):
    """A text to embed is empty; the embedding endpoint refuses it (docs/protocol/pipeline.md §2.3)."""


class MissingEmbeddingsError(KeyError):
    """Vectors needed for scoring are not in the table. ``texts`` lists the missing wire texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = tuple(texts)
        shown = ", ".join(repr(t[:60]) for t in self.texts[:5]) + (" …" if len(self.texts) > 5 else "")
        super().__init__(f"{len(self.texts)} embedding(s) missing: {shown}")

    def __str__(self) -> str:
        return str(self.args[0])


def embedding_input(text: str, *, source: str = "text") -> str:
    """The text as sent to the embedding endpoint: ``"\\n"`` → ``" "``; an empty text is an error.

    Only ``"\\n"`` is replaced (not ``"\\r"`` or tabs), as the reference node did.

    >>> embedding_input("a\\nb")
    'a b'
    """
    if not isinstance(text, str):
        raise TypeError(f"{source} must be str, got {type(text).__name__}")
    wire = text.replace("\n", " ")
    if wire == "":
        raise EmptyEmbeddingTextError(f"{source} is empty; embedding endpoints refuse empty texts")
    return wire


@dataclass(frozen=True)
class EmbeddingBatch:
    """The five groups of texts to embed, each already in wire form (see the module docstring)."""

    labels: tuple[str, ...]
    descriptions: tuple[str, ...]
    label_definitions: tuple[str, ...]
    targets: tuple[str, ...]
    target_definitions: tuple[str, ...]

    @property
    def texts(self) -> list[str]:
        """All texts in request order."""
        return [
            *self.labels,
            *self.descriptions,
            *self.label_definitions,
            *self.targets,
            *self.target_definitions,
        ]

    @property
    def group_sizes(self) -> tuple[int, int, int, int, int]:
        """Unique labels, label descriptions, item definitions, targets, target definitions."""
        return (
            len(self.labels),
            len(self.descriptions),
            len(self.label_definitions),
            len(self.targets),
            len(self.target_definitions),
        )


def embedding_batch_groups(
    label_sets: Iterable[LabelSet],
    definitions: Mapping[str, str] | None,
    settings: SettingsLike,
) -> EmbeddingBatch:
    """The embedding batch, by group. ``definitions`` maps cache key → text (e.g. a
    :class:`~.definitions.DefinitionsCache`); it may be None when nothing is defined."""
    settings = as_settings(settings)
    active, _ = partition_label_sets(label_sets, settings)
    needs_definitions = settings.define_labels or settings.define_targets
    if needs_definitions and definitions is None:
        raise ValueError("definitions are required when define_labels or define_targets is set")

    labels: list[tuple[str, str]] = []
    descriptions: list[tuple[str, str]] = []
    item_keys: list[str] = []
    for label_set in active:
        for j, (label, description) in enumerate(zip(label_set.labels, label_set.descriptions, strict=True)):
            where = f"label set {label_set.identifier!r} detection {j}"
            labels.append((normalize_label(label).value, f"{where}: label {label!r}"))
            if description is not None:
                descriptions.append(
                    (
                        normalize_description_for_embedding(description).value,
                        f"{where}: description {description!r}",
                    )
                )
            if settings.define_labels:
                item_keys.append(detection_definition_item(label, description, settings)[0].cache_key)

    label_definitions: list[tuple[str, str]] = []
    if settings.define_labels:
        assert definitions is not None
        for key, text in zip(item_keys, lookup_definitions(definitions, item_keys), strict=True):
            label_definitions.append((normalize_definition(text).value, f"definition of cache key {key!r}"))

    targets = matching_targets(active, settings)
    target_definitions: list[tuple[str, str]] = []
    if settings.define_targets:
        assert definitions is not None
        keys = [target_definition_item(t).cache_key for t in targets]
        for key, text in zip(keys, lookup_definitions(definitions, keys), strict=True):
            target_definitions.append((text, f"definition of target cache key {key!r}"))

    return EmbeddingBatch(
        labels=_unique_wire(labels),
        descriptions=_unique_wire(descriptions),
        label_definitions=_unique_wire(label_definitions),
        targets=_unique_wire([(t, f"target {t!r}") for t in targets]),
        target_definitions=_unique_wire(target_definitions),
    )


def embedding_batch(
    label_sets: Iterable[LabelSet],
    definitions: Mapping[str, str] | None,
    settings: SettingsLike,
) -> list[str]:
    """All texts to embed, in the reference's group order, wire-ready (see the module docstring).

    For the method notebook's call (6 distinct labels, 2 with descriptions, COCO settings) this is
    6 + 2 + 6 + 357 + 357 = 728 texts.
    """
    return embedding_batch_groups(label_sets, definitions, settings).texts


def _unique_wire(texts_with_source: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """Unique on the text (first occurrence), then transformed for the wire (which may reintroduce a
    duplicate, e.g. "a\\nb" and "a b": both are sent, as by the reference)."""
    unique: dict[str, str] = {}
    for text, source in texts_with_source:
        unique.setdefault(text, source)
    return tuple(embedding_input(text, source=source) for text, source in unique.items())


class EmbeddingTable:
    """Embedding vectors indexed by wire text. Build it from the batch and the endpoint's vectors.

    Duplicate texts keep their first vector. Vectors are stored as float64, unchanged (target vectors are
    used as returned: the reference does not re-normalise them).

    >>> table = EmbeddingTable(["a b", "c"], [[1.0, 0.0], [0.0, 2.0]])
    >>> table.matrix(["c", "a\\nb"]).tolist()
    [[0.0, 2.0], [1.0, 0.0]]
    """

    def __init__(self, texts: Sequence[str], vectors: npt.ArrayLike) -> None:
        array = np.asarray(vectors, dtype=np.float64)
        if array.ndim != 2:
            raise ValueError(f"embedding vectors must form a 2-D array, got shape {array.shape}")
        if len(texts) != array.shape[0]:
            raise ValueError(f"{len(texts)} texts but {array.shape[0]} embedding vectors")
        if not np.all(np.isfinite(array)):
            raise ValueError("embedding vectors contain NaN or infinite values")
        self._array = array
        self._index: dict[str, int] = {}
        for i, text in enumerate(texts):
            self._index.setdefault(embedding_input(text, source=f"embedding text {i}"), i)

    @classmethod
    def from_mapping(cls, vectors: Mapping[str, npt.ArrayLike]) -> EmbeddingTable:
        """From ``{text: vector}``."""
        texts = list(vectors)
        return (
            cls(texts, [np.asarray(vectors[t], dtype=np.float64) for t in texts])
            if texts
            else cls([], np.zeros((0, 0)))
        )

    @property
    def dimension(self) -> int:
        return int(self._array.shape[1])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text.replace("\n", " ") in self._index

    def matrix(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """The vectors of ``texts`` (looked up through :func:`embedding_input`) as rows, in order."""
        wire = [embedding_input(t, source=f"text {i}") for i, t in enumerate(texts)]
        missing = [t for t in dict.fromkeys(wire) if t not in self._index]
        if missing:
            raise MissingEmbeddingsError(missing)
        return self._array[[self._index[t] for t in wire]].reshape(len(wire), self._array.shape[1])


def as_embedding_table(embeddings: EmbeddingTable | Mapping[str, npt.ArrayLike]) -> EmbeddingTable:
    """Accept a table or a ``{text: vector}`` mapping."""
    if isinstance(embeddings, EmbeddingTable):
        return embeddings
    if isinstance(embeddings, Mapping):
        return EmbeddingTable.from_mapping(embeddings)
    raise TypeError(
        f"embeddings must be an EmbeddingTable or a mapping text → vector, got {type(embeddings).__name__}"
    )
