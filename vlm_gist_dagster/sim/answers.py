"""What a simulated VLM answers, following the prompt it is given.

* **The paper's structured description** — a prompt asking for ``object_name`` and ``description``
  fields (its ``dict_prompt``): each GT instance is described with probability ``recall`` (one of its fixed
  description variants, :mod:`.world`), plus about ``hallucinations`` invented objects. With JSON mode the
  text is ``{"objects": [...]}``; otherwise the bare list, or with probability ``fenced_rate`` prose around
  a ```` ```json ```` fence (both are what real models send, and both survive longest-first JSON extraction).
* **nimbro-api's structured description** — its current default prompt asks for ``label``,
  ``description`` (ten to twenty sentences) and ``box_2d`` as ``[y_min, x_min, y_max, x_max]`` normalised to
  0–1000: the same instances, a class / head-noun label, a ten-sentence description and the instance's box
  (jittered by ``box_jitter``).
* **A scene description** — a prompt asking to describe the image: a multi-sentence description naming
  what the model sees.
* **Anything else about an image** — a plain sentence naming a few of the objects in it; without an image,
  a short generic text.

Every draw comes from ``parts`` (seed, model, image, attempt; :mod:`.faults`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import numpy as np

from . import language as lang
from .controls import ModelControls
from .faults import rng, uniform
from .geometry import jitter_box, random_box
from .world import GtInstance, Identified, SimImage

__all__ = [
    "PromptKind",
    "describe_labelled_boxes",
    "describe_objects",
    "format_objects",
    "plain_answer",
    "prompt_kind",
    "reasoning_for",
    "scene_description",
]

#: Share of the invented objects on a class dataset (COCO) that are scene stuff outside its classes.
SCENE_STUFF_SHARE = 0.5

PromptKind = Literal["objects", "labelled_boxes", "scene", "plain"]
_SCENE_REQUEST = re.compile(
    r"\b(describe|description of)\b.{0,40}\b(image|picture|photo|scene)\b", re.IGNORECASE
)


def prompt_kind(texts: list[str], has_image: bool) -> PromptKind:
    """Which kind of answer the prompt asks for (see the module docstring).

    >>> prompt_kind(["... a dictionary with the fields object_name and description. ..."], True)
    'objects'
    >>> prompt_kind(["... the fields label, description, and box_2d ..."], True)
    'labelled_boxes'
    >>> prompt_kind(["Please provide a complete and detailed description of the image above."], True)
    'scene'
    >>> prompt_kind(["What colour is the car?"], True), prompt_kind(["Hello"], False)
    ('plain', 'plain')
    """
    joined = " ".join(texts)
    lower = joined.lower()
    if has_image and "box_2d" in lower and "label" in lower and "description" in lower:
        return "labelled_boxes"
    if has_image and "object_name" in lower and "description" in lower:
        return "objects"
    if has_image and _SCENE_REQUEST.search(joined) and "json" not in lower:
        return "scene"
    return "plain"


# --------------------------------------------------------------------------------------------------
# Which objects a model sees


def _seen_instances(
    image: SimImage, controls: ModelControls, gen: np.random.Generator
) -> list[tuple[int, int, float]]:
    """``(instance index, variant choice, synonym draw)`` of the GT instances the model describes."""
    n = len(image.instances)
    keep = gen.random(n) < controls.recall
    choice = gen.integers(0, 2, size=n)
    synonym_draw = gen.random(n)
    return [(int(i), int(choice[i]), float(synonym_draw[i])) for i in np.flatnonzero(keep)]


def _invented_count(controls: ModelControls, gen: np.random.Generator) -> int:
    whole = int(controls.hallucinations)
    return whole + int(gen.random() < controls.hallucinations - whole)


def describe_objects(
    identified: Identified, controls: ModelControls, parts: tuple, all_class_names: tuple[str, ...]
) -> list[dict[str, str]]:
    """The paper-format structured description of an image: a list of ``{object_name, description}``."""
    image = identified.image
    variants = image.variants()
    gen = rng(*parts, "describe")
    objects: list[dict[str, str]] = []
    for index, choice, synonym_draw in _seen_instances(image, controls, gen):
        options = variants[index]
        variant = options[choice % len(options)]
        name = variant.object_name
        synonyms = lang.SYNONYMS.get(name, ())
        if image.mode == "class" and synonyms and synonym_draw < controls.synonym_rate:
            name = synonyms[int(gen.integers(0, len(synonyms)))]
        objects.append({"object_name": name, "description": variant.description})
    for _ in range(_invented_count(controls, gen)):
        objects.insert(int(gen.integers(0, len(objects) + 1)), _invented_object(image, gen, all_class_names))
    return objects


def _invented_object(
    image: SimImage, gen: np.random.Generator, all_class_names: tuple[str, ...]
) -> dict[str, str]:
    if image.mode == "class":
        present = {inst.label for inst in image.instances}
        pool = [c for c in all_class_names if c not in present and c != "person"] or list(all_class_names)
        # Half of what a model invents on a class dataset is scene "stuff" outside its classes (a wall, a
        # window): real VLMs list those, and label matching rejects them (Mat. < 1); the other half are
        # classes of the dataset that are not in the image (false positives if grounded).
        if gen.random() < SCENE_STUFF_SHARE:
            pool = [c for c in lang.SCENE_STUFF if c not in all_class_names] or pool
        name = pool[int(gen.integers(0, len(pool)))]
        colour = ("black", "white", "red", "blue", "green", "gray", "brown", "yellow")[
            int(gen.integers(0, 8))
        ]
        where = lang.position_phrase(float(gen.random()), float(gen.random()))
        return {"object_name": name, "description": lang.with_article(f"{colour} {name} {where}")}
    name, description = lang.INVENTED_OBJECTS[int(gen.integers(0, len(lang.INVENTED_OBJECTS)))]
    return {"object_name": name, "description": description[:1].upper() + description[1:] + "."}


def format_objects(
    objects: list[dict[str, Any]], json_mode: bool, controls: ModelControls, parts: tuple
) -> str:
    """The completion text of a structured description (see the module docstring)."""
    if json_mode:
        return json.dumps({"objects": objects}, indent=2)
    listing = json.dumps(objects, indent=2)
    if uniform(*parts, "fence") < controls.fenced_rate:
        return f"Here is the list of objects visible in the image:\n\n```json\n{listing}\n```\n"
    return listing


# --------------------------------------------------------------------------------------------------
# nimbro-api's default structured description: label, long description, box_2d


def _label(image: SimImage, inst: GtInstance) -> str:
    return inst.label if image.mode == "class" else lang.head_noun(inst.label)


def _ten_sentences(
    label: str, first: str, box_rel: tuple[float, float, float, float], neighbour: str | None
) -> str:
    """Ten sentences about one object (nimbro-api's prompt asks for ten to twenty): what it is, its
    category, size and position, its nearest neighbour, and a few plain observations."""
    x, y, w, h = box_rel
    first = first.rstrip(".")
    where = lang.position_phrase(x + w / 2, y + h / 2)
    relation = (
        f"The {label} is closest to {lang.with_article(neighbour)}."
        if neighbour
        else f"The {label} stands apart from everything else in the image."
    )
    return " ".join(
        [
            f"{first[:1].upper() + first[1:]}.",
            f"It belongs to the general category {label}.",
            f"It is {lang.size_word(w * h)} in the frame and located {where}.",
            relation,
            "Its outline is clearly visible against the surrounding area.",
            f"The surface of the {label} looks intact, without visible damage.",
            f"The lighting on the {label} is even, so its colours are easy to judge.",
            "No writing or labels can be read on it.",
            "It faces roughly towards the camera.",
            f"Most of the {label} is visible and not covered by other objects.",
        ]
    )


def _long_description(identified: Identified, index: int, choice: int) -> str:
    """Ten sentences about one GT instance, from its description variant, category, size, position and
    nearest neighbour."""
    image = identified.image
    inst = image.instances[index]
    options = image.variants()[index]
    x, y, w, h = inst.box_rel
    others = [o for o in image.instances if o.index != index]

    def distance(o: GtInstance) -> float:
        ox, oy, ow, oh = o.box_rel
        return (ox + ow / 2 - x - w / 2) ** 2 + (oy + oh / 2 - y - h / 2) ** 2

    neighbour = _label(image, min(others, key=distance)) if others else None
    return _ten_sentences(
        _label(image, inst), options[choice % len(options)].description, inst.box_rel, neighbour
    )


def _box_2d(identified: Identified, box: np.ndarray) -> list[int]:
    """``[y_min, x_min, y_max, x_max]`` normalised to 0–1000 (Gemini's convention, which nimbro-api
    asks for), kept non-empty."""
    w, h = identified.width, identified.height
    y1, x1 = int(box[1] / h * 1000), int(box[0] / w * 1000)
    y2, x2 = max(int(np.ceil(box[3] / h * 1000)), y1 + 1), max(int(np.ceil(box[2] / w * 1000)), x1 + 1)
    return [min(y1, 999), min(x1, 999), min(y2, 1000), min(x2, 1000)]


def describe_labelled_boxes(
    identified: Identified, controls: ModelControls, parts: tuple
) -> list[dict[str, Any]]:
    """nimbro-api's default structured description of an image: ``{label, description, box_2d}`` objects
    (the same instances :func:`describe_objects` describes for the same draws)."""
    image, width, height = identified.image, identified.width, identified.height
    gen = rng(*parts, "describe")
    objects: list[dict[str, Any]] = []
    for index, choice, _ in _seen_instances(image, controls, gen):
        inst = image.instances[index]
        box = jitter_box(image.box_xyxy(inst, width, height), controls.box_jitter, gen, width, height)
        objects.append(
            {
                "label": _label(image, inst),
                "description": _long_description(identified, index, choice),
                "box_2d": _box_2d(identified, box),
            }
        )
    for _ in range(_invented_count(controls, gen)):
        name, description = lang.INVENTED_OBJECTS[int(gen.integers(0, len(lang.INVENTED_OBJECTS)))]
        box = random_box(gen, width, height)
        box_rel = (box[0] / width, box[1] / height, (box[2] - box[0]) / width, (box[3] - box[1]) / height)
        objects.insert(
            int(gen.integers(0, len(objects) + 1)),
            {
                "label": name,
                "description": _ten_sentences(name, description, box_rel, None),
                "box_2d": _box_2d(identified, box),
            },
        )
    return objects


# --------------------------------------------------------------------------------------------------
# Free text


def _listing(phrases: list[str]) -> str:
    if not phrases:
        return "nothing that stands out"
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def scene_description(identified: Identified, controls: ModelControls, parts: tuple) -> str:
    """A multi-sentence description of the image: an overview, one sentence per object the model sees
    (at most 20), and a closing sentence."""
    image = identified.image
    gen = rng(*parts, "scene")
    seen = _seen_instances(image, controls, gen)
    names = [lang.with_article(_label(image, image.instances[i])) for i, _, _ in seen]
    sentences = [f"The image shows {_listing(list(dict.fromkeys(names))[:6])}."]
    variants = image.variants()
    for index, choice, _ in seen[:20]:
        inst = image.instances[index]
        description = variants[index][choice % len(variants[index])].description.rstrip(".")
        x, y, w, h = inst.box_rel
        where = lang.position_phrase(x + w / 2, y + h / 2)
        sentences.append(f"There is {description[:1].lower() + description[1:]}, {where}.")
    sentences.append("The rest of the scene is unremarkable and evenly lit.")
    return " ".join(sentences)


def plain_answer(identified: Identified | None, model: str, controls: ModelControls, parts: tuple) -> str:
    """A short answer to any other prompt: with an image, a sentence naming a few objects in it."""
    if identified is None:
        return f"This is a simulated answer from {model}."
    image = identified.image
    seen = _seen_instances(image, controls, rng(*parts, "plain"))
    names = list(dict.fromkeys(lang.with_article(_label(image, image.instances[i])) for i, _, _ in seen))
    return f"The image shows {_listing(names[:4])}."


def reasoning_for(objects: list[dict[str, Any]] | None, subject: str) -> str:
    """The reasoning text of a "thinking" model."""
    if objects is None:
        return f"The user asks about {subject}. I will answer concisely and factually."
    key = "object_name" if objects and "object_name" in objects[0] else "label"
    names = ", ".join(str(o.get(key, "")) for o in objects[:12]) or "nothing recognisable"
    return (
        f"I need to list every object in the image as JSON. Scanning the image from left to right, I can see: "
        f"{names}. Each gets a short, distinct description starting with 'a' or 'an'."
    )
