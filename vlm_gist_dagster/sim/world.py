"""The simulator's world model: the datasets' images and ground truth, and how requests find them.

* **Recognising an image.** Clients send raw file bytes (detection) or re-encoded, shrunken copies
  (description: docs/protocol/pipeline.md §1.2). An image is looked up by the SHA-256 of the bytes first, then
  by a perceptual fingerprint: the decoded image in grayscale, shrunk to 16×16 with ``INTER_AREA``,
  mean-subtracted and L2-normalised. The nearest dataset image by cosine similarity is taken if the
  similarity is ≥ :data:`MATCH_THRESHOLD` and the aspect ratios agree within 3 %. On the two shipped
  datasets a JPEG-60 re-encode or a ×½ ``INTER_AREA`` down-scale keeps the similarity above 0.999,
  while the most similar pair of *different* images stays below 0.78, so the threshold (0.97) leaves
  a wide margin both ways. An unknown image is an error the servers answer with HTTP 400.
* **Two kinds of ground truth.** A dataset whose labels are class names (COCO) is described in
  "class" mode: object_name = the class, description = a short sentence built from the class, the
  colour of the instance's pixels, its size and position. A dataset whose labels are sentences
  (VLM-GIST, median ≥ 4 words per label) is described in "sentence" mode: description = the GT
  sentence or its ≤ 10-word prefix, object_name = the sentence's head noun.
* **Description → instance.** Every description the simulator can emit for an instance is one of a
  few fixed *variants*, computed from the image alone (not from the model or the attempt), so the
  detection server — possibly another process started later — maps a prompt back to its instance by
  the normalised text (docs/protocol/pipeline.md §1.5 normalisation), falling back to the best word overlap
  among GT instances whose class name / head noun occurs in the prompt.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from ..datasets import Dataset, load_dataset
from ..protocol.masks import decode_rle
from ..protocol.text import normalize_string
from . import language as lang

#: Minimum cosine similarity of two fingerprints for "the same image".
MATCH_THRESHOLD = 0.97
FINGERPRINT_SIZE = 16

Mode = Literal["class", "sentence"]


class UnknownImageError(LookupError):
    """The image is in none of the simulator's datasets."""


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""


def normalize_prompt(text: str) -> str:
    """The benchmark's ``dict_value_normalization`` (docs/protocol/pipeline.md §1.5): ASCII, punctuation and
    specials removed, whitespace collapsed, lower case. Applied to both sides of every text lookup."""
    return normalize_string(
        text,
        remove_underscores=True,
        remove_punctuation=True,
        remove_common_specials=True,
        reduce_whitespaces=True,
        lowercase=True,
    )


def fingerprint(image_bgr: np.ndarray) -> np.ndarray:
    """The 256-d perceptual fingerprint of a decoded image (see the module docstring)."""
    gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    thumb = cv2.resize(gray, (FINGERPRINT_SIZE, FINGERPRINT_SIZE), interpolation=cv2.INTER_AREA)
    vec = thumb.astype(np.float64).ravel()
    vec -= vec.mean()
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to a 3-channel BGR array (grayscale images are expanded, as a client should)."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        try:  # formats OpenCV lacks (e.g. some WebP/GIF builds)
            with Image.open(io.BytesIO(data)) as im:
                arr = cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)
        except Exception as exc:  # noqa: BLE001 - any PIL failure means "not an image"
            raise ImageDecodeError(f"cannot decode image bytes ({len(data)} bytes): {exc}") from None
    return arr


@dataclass(frozen=True)
class GtInstance:
    """One ground-truth instance: label (class name or sentence), relative xywh box, RLE mask or None."""

    index: int
    instance_id: str
    label: str
    box_rel: tuple[float, float, float, float]
    mask: Mapping | None


@dataclass(frozen=True)
class DescriptionVariant:
    """One way the simulator describes a GT instance."""

    object_name: str
    description: str


@dataclass
class SimImage:
    """A dataset image as the simulator knows it."""

    key: str
    dataset: str
    image_id: str
    file_name: str
    path: Path
    width: int
    height: int
    sha256: str
    mode: Mode
    instances: tuple[GtInstance, ...]
    class_names: tuple[str, ...]
    _variants: tuple[tuple[DescriptionVariant, ...], ...] | None = field(default=None, repr=False)
    _lookup: dict[str, tuple[int, ...]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---------------------------------------------------------------- descriptions
    def variants(self) -> tuple[tuple[DescriptionVariant, ...], ...]:
        """Per GT instance, the fixed description variants (computed once, thread-safe)."""
        with self._lock:
            if self._variants is None:
                self._variants = self._build_variants()
                lookup: dict[str, list[int]] = {}
                for index, variants in enumerate(self._variants):
                    for variant in variants:
                        entries = lookup.setdefault(normalize_prompt(variant.description), [])
                        if index not in entries:
                            entries.append(index)
                self._lookup = {k: tuple(v) for k, v in lookup.items()}
            return self._variants

    def instances_for_description(self, text: str) -> tuple[int, ...]:
        """GT instance indices whose variants normalise to ``text`` (usually one)."""
        self.variants()
        assert self._lookup is not None
        return self._lookup.get(normalize_prompt(text), ())

    def _build_variants(self) -> tuple[tuple[DescriptionVariant, ...], ...]:
        if self.mode == "sentence":
            return self._sentence_variants()
        return self._class_variants()

    def _sentence_variants(self) -> tuple[tuple[DescriptionVariant, ...], ...]:
        shorts = [lang.shorten_sentence(inst.label) for inst in self.instances]
        short_keys = [normalize_prompt(s) for s in shorts]
        full_keys = {normalize_prompt(inst.label) for inst in self.instances}
        out = []
        for inst, short, key in zip(self.instances, shorts, short_keys, strict=True):
            name = lang.head_noun(inst.label)
            variants = [DescriptionVariant(name, inst.label)]
            # The short form only when it still identifies the instance uniquely in this image.
            if short_keys.count(key) == 1 and key not in full_keys and key != normalize_prompt(inst.label):
                variants.append(DescriptionVariant(name, short[:1].upper() + short[1:] + "."))
            out.append(tuple(variants))
        return tuple(out)

    def _class_variants(self) -> tuple[tuple[DescriptionVariant, ...], ...]:
        colours = self._instance_colours()
        phrases_a: list[str] = []
        phrases_b: list[str] = []
        for inst, colour in zip(self.instances, colours, strict=True):
            x, y, w, h = inst.box_rel
            where = lang.position_phrase(x + w / 2, y + h / 2)
            if inst.label == "person":  # a person's colour is their clothing's
                phrases_a.append(f"person in {colour} clothes {where}")
                phrases_b.append(f"{lang.size_word(w * h)} person wearing {colour}")
            else:
                phrases_a.append(f"{colour} {inst.label} {where}")
                phrases_b.append(f"{lang.size_word(w * h)} {colour} {inst.label}")
        out = []
        for variant_phrases in (phrases_a, phrases_b):
            seen: dict[str, int] = {}
            sentences = []
            for phrase in variant_phrases:
                count = seen.get(phrase, 0)
                seen[phrase] = count + 1
                # "differs from the other descriptions": later duplicates become "another …", "a third …".
                sentences.append(
                    lang.with_article(phrase)
                    if count == 0
                    else f"{lang.ORDINALS[min(count, 8) - 1]} {phrase}"
                )
            out.append(sentences)
        return tuple(
            (DescriptionVariant(inst.label, a), DescriptionVariant(inst.label, b))
            for inst, a, b in zip(self.instances, out[0], out[1], strict=True)
        )

    def _instance_colours(self) -> list[str]:
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            return ["gray"] * len(self.instances)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        colours = []
        for inst in self.instances:
            pixels = None
            if inst.mask is not None:
                try:
                    mask = decode_rle(inst.mask)
                    if mask.shape == rgb.shape[:2] and mask.any():
                        pixels = rgb[mask]
                except Exception:  # noqa: BLE001 - a bad mask only costs the colour word
                    pixels = None
            if pixels is None:
                x0, y0, x1, y1 = self.box_pixels(inst)
                crop = rgb[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
                pixels = crop.reshape(-1, 3)
            colours.append(lang.colour_name(np.median(pixels, axis=0)) if len(pixels) else "gray")
        return colours

    # ---------------------------------------------------------------- geometry
    def box_pixels(
        self, inst: GtInstance, width: int | None = None, height: int | None = None
    ) -> tuple[int, int, int, int]:
        """The GT box as integer pixel xyxy in an image of ``width × height`` (default: original size)."""
        width = width or self.width
        height = height or self.height
        x, y, w, h = inst.box_rel
        return (
            round(x * width),
            round(y * height),
            round((x + w) * width),
            round((y + h) * height),
        )

    def box_xyxy(self, inst: GtInstance, width: int, height: int) -> np.ndarray:
        x, y, w, h = inst.box_rel
        return np.array([x * width, y * height, (x + w) * width, (y + h) * height], dtype=np.float64)

    def full_mask(self, inst: GtInstance, width: int, height: int) -> np.ndarray | None:
        """The GT mask as a bool array of ``height × width`` (resized nearest-neighbour if needed)."""
        if inst.mask is None:
            return None
        mask = decode_rle(inst.mask)
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(
                bool
            )
        return mask

    # ---------------------------------------------------------------- grounding
    def candidates_for_prompt(self, prompt: str) -> tuple[tuple[int, ...], bool]:
        """GT instances a detector prompt refers to, best first, and whether the match is exact.

        Exact: the normalised prompt equals one of the simulator's own description variants. Otherwise
        the instances whose class name / head noun (or a synonym of the class) occurs in the prompt,
        ranked by word overlap between prompt and GT label/variants.
        """
        exact = self.instances_for_description(prompt)
        if exact:
            return exact, True
        prompt_words = set(lang.words(prompt))
        prompt_text = " " + " ".join(lang.words(prompt)) + " "
        scored: list[tuple[float, int]] = []
        variants = self.variants()
        for inst in self.instances:
            if self.mode == "class":
                names = (inst.label, *lang.SYNONYMS.get(inst.label, ()))
            else:
                names = (lang.head_noun(inst.label),)
            if not any(f" {' '.join(lang.words(n))} " in prompt_text for n in names):
                continue
            label_words = (
                set(lang.words(" ".join(v.description for v in variants[inst.index]))) - lang.STOP_WORDS
            )
            content = prompt_words - lang.STOP_WORDS
            overlap = len(content & label_words) / max(1, len(content | label_words))
            scored.append((overlap, inst.index))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return tuple(i for _, i in scored), False


@dataclass(frozen=True)
class Identified:
    """An image recognised in a request: the dataset image and the size of the received copy."""

    image: SimImage
    width: int
    height: int
    exact: bool
    similarity: float


def _dataset_mode(labels: Sequence[str]) -> Mode:
    if not len(labels):
        return "class"
    median_words = float(np.median([len(str(label).split()) for label in labels]))
    return "sentence" if median_words >= 4 else "class"


class World:
    """All images and GT of the simulator's datasets, with lookup by bytes or fingerprint."""

    def __init__(self, datasets: Mapping[str, Dataset]) -> None:
        self.datasets = dict(datasets)
        self.images: dict[str, SimImage] = {}
        self._by_sha: dict[str, SimImage] = {}
        keys: list[str] = []
        fingerprints: list[np.ndarray] = []
        for name, ds in self.datasets.items():
            gt = ds.ground_truth
            mode = _dataset_mode(list(gt["label"]))
            class_names = tuple(sorted(set(map(str, gt["label"])))) if mode == "class" else ()
            grouped = {image_id: frame for image_id, frame in gt.groupby("image_id", sort=False)}
            for row in ds.images.itertuples(index=False):
                frame = grouped.get(row.image_id)
                instances: list[GtInstance] = []
                if frame is not None:
                    for inst in frame.itertuples(index=False):
                        instances.append(
                            GtInstance(
                                index=len(instances),
                                instance_id=str(inst.instance_id),
                                label=str(inst.label),
                                box_rel=(float(inst.x), float(inst.y), float(inst.w), float(inst.h)),
                                mask=inst.mask if isinstance(inst.mask, Mapping) else None,
                            )
                        )
                key = f"{name}/{row.image_id}"
                image = SimImage(
                    key=key,
                    dataset=name,
                    image_id=str(row.image_id),
                    file_name=str(row.file_name),
                    path=Path(row.path),
                    width=int(row.width),
                    height=int(row.height),
                    sha256=str(row.sha256),
                    mode=mode,
                    instances=tuple(instances),
                    class_names=class_names,
                )
                decoded = cv2.imread(str(row.path), cv2.IMREAD_COLOR)
                if decoded is None:
                    raise ImageDecodeError(f"{row.path}: cannot decode dataset image")
                self.images[key] = image
                self._by_sha.setdefault(image.sha256, image)
                keys.append(key)
                fingerprints.append(fingerprint(decoded))
        self._keys = keys
        self._fingerprints = np.stack(fingerprints) if fingerprints else np.zeros((0, FINGERPRINT_SIZE**2))
        self._all_class_names: tuple[str, ...] | None = None

    def identify(self, data: bytes) -> Identified:
        """The dataset image ``data`` (raw file bytes, or a re-encoded / down-scaled copy) shows.

        Raises :class:`UnknownImageError` or :class:`ImageDecodeError`.
        """
        sha = hashlib.sha256(data).hexdigest()
        if sha in self._by_sha:
            image = self._by_sha[sha]
            return Identified(image, image.width, image.height, exact=True, similarity=1.0)
        decoded = decode_image(data)
        height, width = decoded.shape[:2]
        if not len(self._keys):
            raise UnknownImageError("the simulator has no datasets loaded")
        sims = self._fingerprints @ fingerprint(decoded)
        order = np.argsort(-sims)
        aspect = width / height
        for idx in order[:3]:
            if sims[idx] < MATCH_THRESHOLD:
                break
            image = self.images[self._keys[int(idx)]]
            if abs(aspect - image.width / image.height) <= 0.03 * image.width / image.height:
                return Identified(image, width, height, exact=False, similarity=float(sims[idx]))
        raise UnknownImageError(
            f"image ({width}x{height}) is not in the simulator's datasets {sorted(self.datasets)} "
            f"(best fingerprint similarity {float(sims[order[0]]):.3f} < {MATCH_THRESHOLD})"
        )

    def all_class_names(self) -> tuple[str, ...]:
        # Asked for by every description request: computed once (the images never change), not in a loop
        # over every image per request, which made describing N images O(N²) (benchmarks/scale.py).
        if self._all_class_names is None:
            names = {n for image in self.images.values() for n in image.class_names}
            self._all_class_names = tuple(sorted(names | set(lang.COCO_CLASSES)))
        return self._all_class_names


@lru_cache(maxsize=8)
def _cached_world(entries: tuple[tuple[str, str, float], ...]) -> World:
    return World({name: load_dataset(path, name=name) for name, path, _ in entries})


def load_world(datasets: Mapping[str, str | Path | Dataset]) -> World:
    """A :class:`World` for ``{name: dataset directory or loaded Dataset}``.

    Worlds built from directories are cached per process (keyed by path and modification time), so
    tests that start and stop the simulator many times load each dataset once.
    """
    directories = {name: v for name, v in datasets.items() if not isinstance(v, Dataset)}
    if len(directories) == len(datasets):
        entries = []
        for name, path in sorted(directories.items()):
            root = Path(path).expanduser().resolve()
            stamp = max((p.stat().st_mtime for p in root.iterdir()), default=0.0) if root.is_dir() else 0.0
            entries.append((name, str(root), stamp))
        return _cached_world(tuple(entries))
    ids = tuple(sorted((name, id(v)) for name, v in datasets.items()))
    cached = _OBJECT_WORLDS.get(ids)
    if cached is not None and all(cached[0][name] is v for name, v in datasets.items()):
        return cached[1]
    loaded = {
        name: v if isinstance(v, Dataset) else load_dataset(v, name=name) for name, v in datasets.items()
    }
    world = World(loaded)
    if len(_OBJECT_WORLDS) > 8:
        _OBJECT_WORLDS.clear()
    _OBJECT_WORLDS[ids] = (dict(datasets), world)
    return world


#: Worlds built from already-loaded Dataset objects, keyed by object identity (the objects are kept
#: alive in the value, so an id cannot be reused while its entry exists).
_OBJECT_WORLDS: dict[tuple, tuple[dict, World]] = {}
