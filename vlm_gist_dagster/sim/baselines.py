"""The simulated Florence-2 and Kosmos-2 servers: request checks as the public servers make them, and
answers from the ground truth (docs/nimbro_vision_api.md, "florence2" and "kosmos2";
``models/florence2/florence2/model.py`` and ``models/kosmos2/kosmos2/model.py`` of
AIS-Bonn/nimbro_vision_servers).

Both detect each GT instance with probability ``recall`` (boxes jittered by ``box_jitter``) and add about
``hallucinations`` random boxes. Florence-2 answers every task of the server: ``<OD>`` labels are class
names (a sentence's head noun on VLM-GIST), ``<DENSE_REGION_CAPTION>`` labels short region captions, the
caption tasks a sentence or a few, the grounding and region tasks use the instance the phrase or box points
at. Kosmos-2 answers each prompt form with a caption that continues the prompt, listing entity phrases
(``"a car"``) that come with boxes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.segmentation import encode_mask_png
from ..protocol.vision_requests import request_images
from . import language as lang
from ._http import RejectedRequest, request_object
from .controls import ModelControls
from .faults import rng
from .geometry import box_iou, jitter_box, random_box
from .sam2 import mask_for_box
from .world import Identified

__all__ = [
    "FLORENCE_TASKS",
    "KOSMOS_PROMPT_FORMS",
    "FlorencePrompt",
    "florence_answer",
    "kosmos_answer",
    "parse_florence_request",
    "parse_kosmos_request",
]

_ANY_TEXT = r".+"
_FOUR_LOCS = r"(?:<loc_\d+>){4}"
#: Florence-2's task prompts: tag → (what must follow it in the prompt text, the ``prompt_args`` key that
#: supplies it) (florence2/utils.py:6-21, model.py:105-148).
FLORENCE_TASKS: dict[str, tuple[str, str | None]] = {
    "<CAPTION>": ("", None),
    "<DETAILED_CAPTION>": ("", None),
    "<MORE_DETAILED_CAPTION>": ("", None),
    "<CAPTION_TO_PHRASE_GROUNDING>": (_ANY_TEXT, "caption"),
    "<OD>": ("", None),
    "<DENSE_REGION_CAPTION>": ("", None),
    "<REGION_PROPOSAL>": ("", None),
    "<REFERRING_EXPRESSION_SEGMENTATION>": (_ANY_TEXT, "phrase"),
    "<REGION_TO_SEGMENTATION>": (_FOUR_LOCS, "bbox_xyxy"),
    "<OPEN_VOCABULARY_DETECTION>": (_ANY_TEXT, "phrase"),
    "<REGION_TO_CATEGORY>": (_FOUR_LOCS, "bbox_xyxy"),
    "<REGION_TO_DESCRIPTION>": (_FOUR_LOCS, "bbox_xyxy"),
    "<OCR>": ("", None),
    "<OCR_WITH_REGION>": ("", None),
}
_FLORENCE_PATTERNS = {
    tag: re.compile(rf"\s*{re.escape(tag)}{tail}\s*", re.IGNORECASE | re.DOTALL)
    for tag, (tail, _) in FLORENCE_TASKS.items()
}
#: The server's defaults (florence2/model.py:37-44, kosmos2/model.py:37-42).
FLORENCE_DEFAULT_TASK = "<DENSE_REGION_CAPTION>"
FLORENCE_DEFAULT_PARAMETERS = {"max_new_tokens": 1024, "num_beams": 3, "max_batch_size": 8}
KOSMOS_DEFAULT_PROMPT = "<grounding> An image of"
KOSMOS_DEFAULT_PARAMETERS = {"max_new_tokens": 64, "max_batch_size": 16}
#: Kosmos-2's accepted prompt forms (kosmos2/utils.py:4-13): after ``<grounding>``, a brief caption
#: ("An image of" and optional text), a detailed one ("Describe this image in detail:" and optional text),
#: a grounded question ("Question: … Answer:") or one phrase to ground ("<phrase> … </phrase>"); any case.
_AFTER_GROUNDING = r"\s*<grounding>\s*"
KOSMOS_PROMPT_FORMS: dict[str, re.Pattern[str]] = {
    name: re.compile(_AFTER_GROUNDING + body + r"\s*", re.IGNORECASE | re.DOTALL)
    for name, body in (
        ("caption_brief", r"an image of(?:\s+.*)?"),
        ("caption_detailed", r"describe this image in detail:(?:\s+.*)?"),
        ("grounded_vqa", r"question:\s*.+?\s*answer:"),
        ("phrase_grounding", r"<phrase>\s*.+?\s*</phrase>"),
    )
}


def florence_task(text: str) -> str | None:
    """The task tag a Florence-2 prompt text conforms to, or None.

    >>> florence_task(" <od> "), florence_task("<OPEN_VOCABULARY_DETECTION>a red car"), florence_task("<XYZ>")
    ('<OD>', '<OPEN_VOCABULARY_DETECTION>', None)
    """
    return next((tag for tag, pattern in _FLORENCE_PATTERNS.items() if pattern.fullmatch(text)), None)


def _integer_parameters(payload: dict[str, Any], defaults: dict[str, int]) -> dict[str, int]:
    parameters = payload.get("inference_parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise RejectedRequest("Invalid 'inference_parameters' in payload")
    out = dict(parameters)
    for name, default in defaults.items():
        out.setdefault(name, default)
        if not isinstance(out[name], int):  # bool passes, as isinstance(True, int) does on the server
            raise RejectedRequest(f"Invalid '{name}' in inference_parameters")
    return out


def _images(payload: Any) -> list[Any]:
    return request_images(request_object(payload), RejectedRequest)


# --------------------------------------------------------------------------------------------------
# Florence-2


@dataclass(frozen=True)
class FlorencePrompt:
    """A checked Florence-2 prompt: its task tag and the argument the task needs (caption, phrase or box)."""

    task: str
    argument: Any = None


def _florence_prompt(prompt: dict[str, Any]) -> FlorencePrompt:
    task_prompt = prompt.get("task_prompt")
    if task_prompt is None:
        raise RejectedRequest("Missing 'task_prompt' in prompt")
    if not isinstance(task_prompt, str):
        raise RejectedRequest("Invalid task_prompt in payload")
    task = task_prompt if task_prompt in FLORENCE_TASKS else florence_task(task_prompt)
    if task is None:
        raise RejectedRequest(
            f"Invalid prompt format: {task_prompt}. Accepted formats: {list(FLORENCE_TASKS)}"
        )
    args = prompt.get("prompt_args")
    if args is None:
        args = {}
    _, needs = FLORENCE_TASKS[task]
    if needs is None:
        return FlorencePrompt(task)
    if not isinstance(args, dict):
        raise RejectedRequest(f"'{type(args).__name__}' object has no attribute 'get'")
    value = args.get(needs)
    if value is None:
        raise RejectedRequest(f"Missing '{needs}' in prompt_args for {task}")
    if needs == "bbox_xyxy":
        if not isinstance(value, list) or len(value) != 4:
            raise RejectedRequest(f"Invalid 'bbox_xyxy' in prompt_args for {task}")
    elif not isinstance(value, str) or not value:
        raise RejectedRequest(f"Invalid '{needs}' in prompt_args for {task}")
    return FlorencePrompt(task, value)


def parse_florence_request(payload: Any) -> tuple[list[Any], list[FlorencePrompt]]:
    """Images (base64) and one checked prompt per image of a Florence-2 ``/infer`` body (model.py:150-219).

    >>> parse_florence_request({"images": ["QUJD"]})[1]
    [FlorencePrompt(task='<DENSE_REGION_CAPTION>', argument=None)]
    """
    images = _images(payload)
    prompts = payload.get("prompts")
    if prompts is None:
        prompts = [{"task_prompt": FLORENCE_DEFAULT_TASK, "prompt_args": None}]
    if not isinstance(prompts, list):
        if isinstance(prompts, dict):
            prompts = [prompts]
        elif isinstance(prompts, str):
            prompts = [{"task_prompt": prompts, "prompt_args": None}]
        else:
            raise RejectedRequest("Invalid 'prompts' in payload")
    if len(prompts) == 1 and len(images) > 1:
        prompts = prompts * len(images)
    standardized = []
    for prompt in prompts:
        if isinstance(prompt, str):
            prompt = {"task_prompt": prompt, "prompt_args": None}
        elif not isinstance(prompt, dict):
            raise RejectedRequest("Invalid 'prompts' in payload")
        standardized.append(prompt)
    if len(images) != len(standardized):
        raise RejectedRequest("Mismatch between number of images and prompts")
    _integer_parameters(payload, FLORENCE_DEFAULT_PARAMETERS)
    return images, [_florence_prompt(p) for p in standardized]


def _jittered_box(
    identified: Identified, inst: Any, controls: ModelControls, gen: np.random.Generator
) -> np.ndarray:
    """The GT box of ``inst`` (pixel xyxy) with the model's ``box_jitter``."""
    width, height = identified.width, identified.height
    box = identified.image.box_xyxy(inst, width, height)
    return jitter_box(box, controls.box_jitter, gen, width, height)


def _found(
    identified: Identified, controls: ModelControls, gen: np.random.Generator
) -> list[tuple[Any, list[int]]]:
    """The GT instances the model "sees" (each with probability ``recall``) and their jittered int boxes."""
    out = []
    for inst in identified.image.instances:
        if gen.random() >= controls.recall:
            continue
        out.append((inst, [int(v) for v in _jittered_box(identified, inst, controls, gen)]))
    return out


def _invented(
    identified: Identified, controls: ModelControls, gen: np.random.Generator
) -> list[tuple[str, list[int]]]:
    count = int(controls.hallucinations) + int(
        gen.random() < controls.hallucinations - int(controls.hallucinations)
    )
    out = []
    for _ in range(count):
        name = lang.INVENTED_OBJECTS[int(gen.integers(0, len(lang.INVENTED_OBJECTS)))][0]
        out.append((name, [int(v) for v in random_box(gen, identified.width, identified.height)]))
    return out


def _name(identified: Identified, inst: Any) -> str:
    return inst.label if identified.image.mode == "class" else lang.head_noun(inst.label)


def _region_caption(identified: Identified, inst: Any) -> str:
    phrase = identified.image.variants()[inst.index][-1].description
    phrase = phrase[2:] if phrase.lower().startswith("a ") else phrase
    return lang.shorten_sentence(phrase, 6).lower()


def _listing(phrases: list[str]) -> str:
    if not phrases:
        return "a scene"
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _best_instance(identified: Identified, box: Any) -> Any:
    image = identified.image
    scores = [
        box_iou(np.asarray(box, dtype=np.float64), image.box_xyxy(inst, identified.width, identified.height))
        for inst in image.instances
    ]
    return image.instances[int(np.argmax(scores))] if scores and max(scores) > 0 else None


def _segment(identified: Identified, box: np.ndarray) -> dict[str, Any] | None:
    """A Florence-2 segmentation entry: box ``[xmin, ymin, xmax + 1, ymax + 1]`` and the PNG of the mask
    inside it (utils.py:57-99)."""
    mask = mask_for_box(identified.image, identified.width, identified.height, box, grow_thin=False)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    return {"box_xyxy": [x1, y1, x2, y2], "mask": encode_mask_png(mask[y1:y2, x1:x2])}


def florence_answer(
    identified: Identified, prompt: FlorencePrompt, controls: ModelControls, parts: tuple
) -> tuple[list[dict[str, Any]], str | None]:
    """``(detections, caption)`` of one image for one task (model.py:252-353 for the shapes)."""
    gen = rng(*parts, "florence", prompt.task, repr(prompt.argument))
    task = prompt.task
    if task in ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"):
        seen = [inst for inst, _ in _found(identified, controls, gen)]
        names = [lang.with_article(_name(identified, inst)) for inst in seen]
        caption = f"The image shows {_listing(names[:4] if task == '<CAPTION>' else names)}."
        if task != "<CAPTION>":
            limit = 3 if task == "<DETAILED_CAPTION>" else 12
            caption += "".join(
                f" There is {lang.with_article(_region_caption(identified, inst))}." for inst in seen[:limit]
            )
        return [], caption
    if task in ("<OD>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>"):
        out = []
        for inst, box in _found(identified, controls, gen):
            label = _name(identified, inst) if task == "<OD>" else _region_caption(identified, inst)
            out.append({"box_xyxy": box, "label": label})
        out += [{"box_xyxy": box, "label": name} for name, box in _invented(identified, controls, gen)]
        if task == "<REGION_PROPOSAL>":
            out = [{"box_xyxy": d["box_xyxy"]} for d in out]
        return out, None
    if task == "<CAPTION_TO_PHRASE_GROUNDING>":
        caption_words = f" {' '.join(lang.words(prompt.argument))} "
        out = [
            {"box_xyxy": box, "label": _name(identified, inst)}
            for inst, box in _found(identified, controls, gen)
            if f" {' '.join(lang.words(_name(identified, inst)))} " in caption_words
        ]
        return out, None
    if task in ("<OPEN_VOCABULARY_DETECTION>", "<REFERRING_EXPRESSION_SEGMENTATION>"):
        candidates, _ = identified.image.candidates_for_prompt(prompt.argument)
        keep = candidates[:1] if task == "<REFERRING_EXPRESSION_SEGMENTATION>" else candidates
        out = []
        for index in keep:
            inst = identified.image.instances[index]
            jittered = _jittered_box(identified, inst, controls, gen)
            if task == "<OPEN_VOCABULARY_DETECTION>":
                out.append({"box_xyxy": [int(v) for v in jittered], "label": prompt.argument})
            elif (entry := _segment(identified, jittered)) is not None:
                out.append({**entry, "label": prompt.argument})
        return out, None
    if task == "<REGION_TO_SEGMENTATION>":
        entry = _segment(identified, np.asarray(prompt.argument, dtype=np.float64))
        return ([entry] if entry is not None else []), None
    if task in ("<REGION_TO_CATEGORY>", "<REGION_TO_DESCRIPTION>"):
        inst = _best_instance(identified, prompt.argument)
        if inst is None:
            return [], "object"
        if task == "<REGION_TO_CATEGORY>":
            return [], _name(identified, inst)
        return [], _region_caption(identified, inst)
    if task == "<OCR>":
        return [], ""  # the datasets carry no text annotations: no text is read
    return [], None  # <OCR_WITH_REGION>: no text regions


# --------------------------------------------------------------------------------------------------
# Kosmos-2


def parse_kosmos_request(payload: Any) -> tuple[list[Any], list[str]]:
    """Images (base64) and one prompt per image of a Kosmos-2 ``/infer`` body (model.py:98-150).

    >>> parse_kosmos_request({"images": "QUJD"})[1]
    ['<grounding> An image of']
    """
    images = _images(payload)
    prompts = payload.get("prompts")
    if prompts is None:
        prompts = [KOSMOS_DEFAULT_PROMPT]
    if not isinstance(prompts, list):
        if not isinstance(prompts, str):
            raise RejectedRequest("Invalid 'prompts' in payload")
        prompts = [prompts]
    if len(prompts) == 1 and len(images) > 1:
        prompts = prompts * len(images)
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise RejectedRequest("Invalid 'prompts' in payload")
        if kosmos_form(prompt) is None:
            raise RejectedRequest(
                f"Invalid prompt format: {prompt}. Accepted formats: {list(KOSMOS_PROMPT_FORMS)}"
            )
    if len(images) != len(prompts):
        raise RejectedRequest("Mismatch between number of images and prompts")
    _integer_parameters(payload, KOSMOS_DEFAULT_PARAMETERS)
    return images, list(prompts)


def kosmos_form(prompt: str) -> str | None:
    """The name of the prompt form ``prompt`` conforms to, or None.

    >>> kosmos_form("<grounding> Describe this image in detail:"), kosmos_form("Describe it")
    ('caption_detailed', None)
    """
    return next((name for name, pattern in KOSMOS_PROMPT_FORMS.items() if pattern.fullmatch(prompt)), None)


def kosmos_answer(
    identified: Identified, prompt: str, controls: ModelControls, parts: tuple
) -> tuple[list[dict[str, Any]], str]:
    """``(entity detections, caption)`` of one image. The caption continues the prompt's text (Kosmos-2
    generates after it; the tags are removed) and names every entity that has a box."""
    gen = rng(*parts, "kosmos", prompt)
    text = re.sub(r"</?(?:grounding|phrase)>", " ", prompt)
    text = " ".join(text.split())
    form = kosmos_form(prompt)
    if form == "phrase_grounding":
        candidates, _ = identified.image.candidates_for_prompt(text)
        out = []
        for index in candidates[:1]:
            inst = identified.image.instances[index]
            box = _jittered_box(identified, inst, controls, gen)
            out.append({"box_xyxy": [int(v) for v in box], "label": text})
        return out, text
    found = [
        (lang.with_article(_name(identified, inst)), box) for inst, box in _found(identified, controls, gen)
    ]
    found += [(lang.with_article(name), box) for name, box in _invented(identified, controls, gen)]
    detections = [{"box_xyxy": box, "label": label} for label, box in found]
    listing = _listing([label for label, _ in found])
    if form == "caption_brief":
        caption = f"{text} {listing}." if text.lower().rstrip().endswith("image of") else f"{text}."
    elif form == "caption_detailed":
        caption = f"{text} The image features {listing}."
    else:  # grounded_vqa
        caption = f"{text} {listing[:1].upper() + listing[1:]}."
    return detections, caption
