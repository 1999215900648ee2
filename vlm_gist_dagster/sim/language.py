"""Words for the simulated models: COCO class names and synonyms, colour names, head nouns of
VLM-GIST sentences, short descriptions, invented (hallucinated) objects and definitions.

Everything here is deterministic text manipulation; randomness is passed in as numbers.

>>> head_noun("A black, concave transponder with a smooth, circular appearance on the couch table.")
'transponder'
>>> with_article("orange cat")
'an orange cat'
>>> shorten_sentence("A yellow tube of detergent labeled rei on the sideboard next to the sink.", 10)
'A yellow tube of detergent labeled rei on the sideboard'
>>> shorten_sentence("A braided money tree in a white pot standing on the floor.")
'A braided money tree in a white pot'
"""

from __future__ import annotations

import json
import re

import numpy as np

#: The 80 COCO detection classes (val2017 names, as FiftyOne and the paper spell them).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

#: Words a VLM uses instead of a COCO class name (object_name synonyms; also the embedding's concepts).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "bicycle": ("bike",),
    "car": ("automobile", "sedan"),
    "motorcycle": ("motorbike", "scooter"),
    "airplane": ("plane", "aircraft", "aeroplane", "jet"),
    "bus": ("coach",),
    "truck": ("lorry", "pickup truck"),
    "boat": ("ship", "sailboat"),
    "bench": ("park bench",),
    "bird": ("pigeon", "seagull"),
    "cow": ("cattle",),
    "handbag": ("purse", "bag"),
    "tie": ("necktie",),
    "suitcase": ("luggage",),
    "sports ball": ("ball", "tennis ball", "soccer ball", "football"),
    "baseball glove": ("mitt",),
    "tennis racket": ("racket", "racquet"),
    "wine glass": ("glass",),
    "cup": ("mug", "coffee cup"),
    "bowl": ("dish",),
    "donut": ("doughnut",),
    "chair": ("seat", "armchair", "stool"),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "flower pot"),
    "dining table": ("table", "desk"),
    "tv": ("television", "monitor", "screen"),
    "laptop": ("notebook computer", "computer"),
    "mouse": ("computer mouse",),
    "remote": ("remote control",),
    "keyboard": ("computer keyboard",),
    "cell phone": ("smartphone", "mobile phone", "phone"),
    "refrigerator": ("fridge",),
    "book": ("novel", "notebook"),
    "clock": ("wall clock",),
    "teddy bear": ("stuffed animal", "plush toy"),
    "hair drier": ("hair dryer", "blow dryer"),
    "dog": ("puppy",),
    "cat": ("kitten",),
    "hot dog": ("sausage",),
}

#: Plausible objects a VLM invents in an indoor scene (description-mode hallucinations).
#: Things a real VLM lists in a COCO photo that are not among COCO's 80 categories (surfaces, "stuff",
#: fixtures). Label matching rejects them, which is what makes Mat. fall below 1 on COCO.
SCENE_STUFF: tuple[str, ...] = (
    "wall",
    "floor",
    "window",
    "ceiling",
    "tree",
    "sky",
    "curtain",
    "shelf",
    "lamp",
    "road",
    "building",
    "fence",
    "grass",
    "door",
    "cabinet",
    "rug",
)

INVENTED_OBJECTS: tuple[tuple[str, str], ...] = (
    ("vase", "a blue ceramic vase with a narrow neck"),
    ("umbrella", "a black folded umbrella leaning against the wall"),
    ("backpack", "a red backpack with two zippered pockets"),
    ("picture frame", "a wooden picture frame hanging on the wall"),
    ("lamp", "a white ceiling lamp with a round shade"),
    ("cardboard box", "a brown cardboard box sealed with tape"),
    ("headphones", "a pair of black over-ear headphones"),
    ("candle", "a white candle in a glass holder"),
    ("remote control", "a black remote control with rubber buttons"),
    ("keys", "a bunch of silver keys on a ring"),
    ("water bottle", "a transparent plastic water bottle with a blue cap"),
    ("notebook", "a spiral notebook with a green cover"),
    ("plant", "a small succulent in a terracotta pot"),
    ("wall clock", "a round wall clock with black hands"),
    ("rug", "a grey patterned rug on the floor"),
    ("pen", "a blue ballpoint pen"),
)

#: Named colours (RGB) for the colour of a COCO instance's pixels.
_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (20, 20, 20)), ("gray", (128, 128, 128)), ("white", (235, 235, 235)), ("red", (200, 30, 30)),
    ("orange", (230, 130, 30)), ("yellow", (230, 210, 40)), ("green", (50, 150, 50)), ("blue", (40, 80, 200)),
    ("purple", (120, 50, 150)), ("pink", (230, 140, 170)), ("brown", (120, 80, 40)), ("beige", (210, 190, 150)),
    ("dark green", (30, 70, 40)), ("navy", (25, 30, 80)), ("silver", (180, 185, 190)),
)  # fmt: skip

_BOUNDARY_WORDS = frozenset(
    [
        "in",
        "on",
        "with",
        "of",
        "at",
        "beneath",
        "under",
        "below",
        "above",
        "behind",
        "near",
        "next",
        "inside",
        "against",
        "between",
        "from",
        "for",
        "labeled",
        "labelled",
        "filled",
        "showing",
        "displayed",
        "standing",
        "lying",
        "hanging",
        "leaning",
        "sitting",
        "placed",
        "that",
        "which",
        "and",
        "featuring",
        "containing",
        "holding",
        "wearing",
        "to",
        "by",
        "atop",
        "into",
        "across",
        "along",
        "over",
        "around",
        "without",
        "covered",
        "attached",
        "mounted",
        "stacked",
        "resting",
        "partially",
        "partly",
        "visible",
    ]
)
_ARTICLES = frozenset({"a", "an", "the", "two", "some", "another"})
_TRAILING_FILLER = frozenset(_BOUNDARY_WORDS | _ARTICLES | {"its", "their", "his", "her"})
STOP_WORDS = frozenset(
    _BOUNDARY_WORDS
    | _ARTICLES
    | {
        "is",
        "are",
        "it",
        "its",
        "this",
        "left",
        "right",
        "side",
        "top",
        "bottom",
        "center",
        "middle",
        "front",
        "back",
    }
)


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words."""
    return re.findall(r"[a-z0-9]+", text.lower())


def with_article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def head_noun(sentence: str) -> str:
    """The noun a VLM-GIST sentence is about: the last word before the first preposition/participle
    after the leading article (``"A braided money tree in a pot"`` → ``"tree"``)."""
    tokens = words(sentence)
    while tokens and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    if not tokens:
        return "object"
    for i, token in enumerate(tokens[1:], start=1):
        if token in _BOUNDARY_WORDS:
            return tokens[i - 1]
    return tokens[-1]


def shorten_sentence(sentence: str, max_words: int = 10) -> str:
    """At most ``max_words`` words of ``sentence`` without its final period: cut before the last
    preposition/participle that keeps it short enough, trailing function words dropped (the prompt asks
    for ≤ 10-word descriptions; many VLM-GIST sentences are longer)."""
    tokens = sentence.strip().rstrip(".").split()
    if len(tokens) > max_words:
        plain = [re.sub(r"[^a-z]", "", t.lower()) for t in tokens]
        cuts = [i for i in range(2, max_words + 1) if plain[i] in _BOUNDARY_WORDS]
        tokens = tokens[: cuts[-1]] if cuts else tokens[:max_words]
    while len(tokens) > 2 and re.sub(r"[^a-z]", "", tokens[-1].lower()) in _TRAILING_FILLER:
        tokens = tokens[:-1]
    return " ".join(tokens).rstrip(",;:")


def colour_name(rgb: np.ndarray | tuple[float, float, float]) -> str:
    """The nearest named colour to a mean RGB value."""
    rgb_arr = np.asarray(rgb, dtype=np.float64)
    names = [name for name, _ in _COLOURS]
    table = np.array([value for _, value in _COLOURS], dtype=np.float64)
    return names[int(np.argmin(((table - rgb_arr) ** 2).sum(axis=1)))]


def position_phrase(cx: float, cy: float) -> str:
    """Where a box centre (relative coordinates) lies: ``"at the top left"``, ``"in the center"``, …"""
    horizontal = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    vertical = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    if horizontal and vertical:
        return f"at the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the center"


def size_word(area_rel: float) -> str:
    return "small" if area_rel < 0.01 else ("large" if area_rel > 0.15 else "medium-sized")


ORDINALS = ("another", "a third", "a fourth", "a fifth", "a sixth", "a seventh", "an eighth", "a ninth")


def definition_for(term: str, description: str | None = None) -> str:
    """A deterministic 5-sentence definition of ``term`` (the answer to both definition prompts of
    docs/protocol/evaluation.md §1.5). It avoids the words the item prompt forbids ('item', 'category', 'context')."""
    term = term.strip() or "object"
    first = f"A {term} is a physical object that people recognise by its typical shape, size and parts."
    if description:
        second = f"A typical example can be described as {description.strip().rstrip('.')}."
    else:
        second = f"A {term} is commonly found in homes, streets, offices or other everyday places."
    return " ".join(
        [
            first,
            second,
            f"The appearance of a {term} is defined by its characteristic outline, material and colour.",
            f"People use or encounter a {term} for the purposes that its design and function serve.",
            f"In photographs, a {term} can be told apart from similar objects by these visual features.",
        ]
    )


def parse_definition_item(text: str) -> tuple[str, str | None]:
    """``(term, description)`` from the ``{item}``/``{label}`` fill of a definition prompt: either a plain
    label or the JSON ``{"object_name": ..., "description": ...}`` item of docs/protocol/evaluation.md §1.5."""
    text = text.strip()
    if text.startswith("{"):
        try:
            item = json.loads(text)
        except json.JSONDecodeError:
            return text, None
        if isinstance(item, dict):
            values = [str(v) for v in item.values()]
            term = values[0] if values else text
            description = values[1] if len(values) > 1 else None
            return term, description
    return text, None
