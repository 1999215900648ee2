"""``florence2``: Florence-2 (base, large and their fine-tuned ``_ft`` versions), as the authors' server.

Request (``POST /infer``), as the real server's ``Model.preprocess`` reads it::

    {"images": ["<b64>", ...] | "<b64>",
     "prompts": [{"task_prompt": "<OD>", "prompt_args": null | {...}}, ...] | {...} | "<OD>",  # default <DENSE_REGION_CAPTION>
     "inference_parameters": {"max_new_tokens": 1024, "num_beams": 3, "max_batch_size": 8}}

One prompt for all images or one per image. ``prompt_args``: ``caption`` for
``<CAPTION_TO_PHRASE_GROUNDING>``, ``phrase`` for ``<REFERRING_EXPRESSION_SEGMENTATION>`` and
``<OPEN_VOCABULARY_DETECTION>``, ``bbox_xyxy`` (pixels) for ``<REGION_TO_SEGMENTATION>``,
``<REGION_TO_CATEGORY>`` and ``<REGION_TO_DESCRIPTION>`` (turned into ``<loc_…>`` tokens).
Generation is greedy beam search (``do_sample=False``), images in mini-batches of ``max_batch_size``.

Response ``{"artifact": {"detections": [[...] per image], "captions": [str | null per image],
"model": "florence2"}}``: caption tasks (``<CAPTION>``, ``<DETAILED_CAPTION>``,
``<MORE_DETAILED_CAPTION>``, ``<OCR>``, ``<REGION_TO_CATEGORY>``, ``<REGION_TO_DESCRIPTION>``) give a
caption and no detections; ``<OD>``, ``<DENSE_REGION_CAPTION>``, ``<CAPTION_TO_PHRASE_GROUNDING>`` and
``<OPEN_VOCABULARY_DETECTION>`` give ``{"box_xyxy": [int ×4], "label": str}``; ``<REGION_PROPOSAL>``
boxes only; the segmentation tasks ``{"box_xyxy", "mask"}`` (the polygons rasterised into a mask of
the box, base64 PNG; ``label`` too for referring expressions); ``<OCR_WITH_REGION>`` the quads'
boxes and texts. Parsing is transformers' ``Florence2Processor.post_process_generation``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..protocol.segmentation import encode_mask_png
from ..protocol.vision_requests import request_images
from ._codec import decode_images
from .app import ModelFamily, RequestError

__all__ = ["FLAVORS", "Florence2", "task_of"]

FLAVORS: dict[str, str] = {
    "base": "florence-community/Florence-2-base",
    "large": "florence-community/Florence-2-large",
    "base_ft": "florence-community/Florence-2-base-ft",
    "large_ft": "florence-community/Florence-2-large-ft",
}

# task tag → what may follow it in a complete prompt (the real server's accepted prompt formats)
_TASKS: dict[str, str] = {
    "<CAPTION>": "",
    "<DETAILED_CAPTION>": "",
    "<MORE_DETAILED_CAPTION>": "",
    "<OD>": "",
    "<DENSE_REGION_CAPTION>": "",
    "<REGION_PROPOSAL>": "",
    "<OCR>": "",
    "<OCR_WITH_REGION>": "",
    "<CAPTION_TO_PHRASE_GROUNDING>": ".+",
    "<REFERRING_EXPRESSION_SEGMENTATION>": ".+",
    "<OPEN_VOCABULARY_DETECTION>": ".+",
    "<REGION_TO_SEGMENTATION>": r"(?:<loc_\d+>){4}",
    "<REGION_TO_CATEGORY>": r"(?:<loc_\d+>){4}",
    "<REGION_TO_DESCRIPTION>": r"(?:<loc_\d+>){4}",
}
_PATTERNS = {tag: re.compile(rf"^\s*{re.escape(tag)}{rest}\s*$", re.I | re.S) for tag, rest in _TASKS.items()}
_CAPTION_TASKS = (
    "<CAPTION>",
    "<DETAILED_CAPTION>",
    "<MORE_DETAILED_CAPTION>",
    "<OCR>",
    "<REGION_TO_CATEGORY>",
    "<REGION_TO_DESCRIPTION>",
)
_ARG_TASKS = {
    "<CAPTION_TO_PHRASE_GROUNDING>": "caption",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "phrase",
    "<OPEN_VOCABULARY_DETECTION>": "phrase",
    "<REGION_TO_SEGMENTATION>": "bbox_xyxy",
    "<REGION_TO_CATEGORY>": "bbox_xyxy",
    "<REGION_TO_DESCRIPTION>": "bbox_xyxy",
}
DEFAULTS = {"max_new_tokens": 1024, "num_beams": 3, "max_batch_size": 8}


def task_of(prompt: str) -> str | None:
    """The task tag a complete prompt conforms to, or None.

    >>> task_of("<OD>"), task_of("<REGION_TO_CATEGORY><loc_1><loc_2><loc_3><loc_4>"), task_of("hello")
    ('<OD>', '<REGION_TO_CATEGORY>', None)
    """
    for tag, pattern in _PATTERNS.items():
        if pattern.fullmatch(prompt):
            return tag
    return None


def _loc_tokens(box: list[Any], width: int, height: int) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    bins = [int(1000 * x1 / width), int(1000 * y1 / height), int(1000 * x2 / width), int(1000 * y2 / height)]
    return "".join(f"<loc_{max(0, min(b, 999))}>" for b in bins)


def _polygons_box_and_mask(polygons: list[list[float]]) -> tuple[list[int], np.ndarray]:
    """The union of flat ``[x1, y1, x2, y2, ...]`` polygons: its box (floor/ceil, exclusive max) and mask."""
    from skimage.draw import polygon as fill_polygon

    xs = np.concatenate([np.asarray(p[0::2], dtype=np.float32) for p in polygons])
    ys = np.concatenate([np.asarray(p[1::2], dtype=np.float32) for p in polygons])
    x0, y0 = int(np.floor(xs.min())), int(np.floor(ys.min()))
    x1, y1 = int(np.ceil(xs.max())), int(np.ceil(ys.max()))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
    for p in polygons:
        rr, cc = fill_polygon(
            np.asarray(p[1::2], dtype=np.float32) - y0,
            np.asarray(p[0::2], dtype=np.float32) - x0,
            shape=mask.shape,
        )
        mask[rr, cc] = True
    return [x0, y0, x1 + 1, y1 + 1], mask


class _Generative(ModelFamily):
    """Shared by Florence-2 and Kosmos-2: a processor, PIL images, mini-batched ``generate``."""

    defaults: dict[str, int] = {}

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.processor: Any = None

    def unload(self) -> None:
        self.processor = None
        super().unload()

    def load_model(self, flavor: str, payload: dict[str, Any]) -> None:
        if self.runtime.random_weights:
            if self.runtime.random_size != "tiny":
                raise RequestError(
                    f"--random-size {self.runtime.random_size} is not available for {self.name}"
                )
            model, processor = self.tiny_random_model(self.runtime.seed)
        else:
            from transformers import AutoProcessor

            model = self.load_pretrained(self.model_class(), flavor)
            processor = self.load_pretrained(AutoProcessor, flavor)
        self.use_model(model)
        self.processor = processor

    def model_class(self) -> Any:
        """The transformers class of the family's pretrained model (imported when a model loads)."""
        raise NotImplementedError

    @staticmethod
    def tiny_random_model(seed: int) -> tuple[Any, Any]:
        """A tiny model with random weights and its processor (``--random-weights``)."""
        raise NotImplementedError

    def _images(self, payload: dict[str, Any]) -> list[np.ndarray]:
        return decode_images(request_images(payload, RequestError))

    def _parameters(self, payload: dict[str, Any]) -> dict[str, int]:
        params = payload.get("inference_parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise RequestError("Invalid 'inference_parameters' in payload")
        out = dict(self.defaults)
        for key in self.defaults:
            value = params.get(key, self.defaults[key])
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(f"Invalid '{key}' in inference_parameters")
            out[key] = value
        return out

    def _processed_batches(
        self, images: list[np.ndarray], prompts: list[str], step: int
    ) -> Iterator[tuple[list[Any], list[str], dict[str, Any]]]:
        """Mini-batches of at most ``step`` images: ``(PIL images, prompts, processor inputs on the device)``."""
        import torch
        from PIL import Image

        for start in range(0, len(images), step):
            batch_images = [Image.fromarray(im) for im in images[start : start + step]]
            batch_prompts = prompts[start : start + step]
            inputs = self.processor(
                text=batch_prompts, images=batch_images, return_tensors="pt", padding=True
            )
            on_device = {
                k: (v.to(self.device, dtype=self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                for k, v in inputs.items()
            }
            yield batch_images, batch_prompts, on_device


class Florence2(_Generative):
    name = "florence2"
    flavors = FLAVORS
    defaults = DEFAULTS

    def model_class(self) -> Any:
        from transformers import Florence2ForConditionalGeneration

        return Florence2ForConditionalGeneration

    @staticmethod
    def tiny_random_model(seed: int) -> tuple[Any, Any]:
        from ._tiny import tiny_florence2

        return tiny_florence2(seed)

    def prepare(self, payload: dict[str, Any]) -> tuple[list[np.ndarray], list[str], dict[str, int]]:
        images = self._images(payload)
        prompts = payload.get("prompts")
        if prompts is None:
            prompts = [{"task_prompt": "<DENSE_REGION_CAPTION>", "prompt_args": None}]
        if isinstance(prompts, (dict, str)):
            prompts = [prompts]
        if not isinstance(prompts, list):
            raise RequestError("Invalid 'prompts' in payload")
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        prompts = [{"task_prompt": p, "prompt_args": None} if isinstance(p, str) else p for p in prompts]
        if not all(isinstance(p, dict) for p in prompts):
            raise RequestError("Invalid 'prompts' in payload")
        if len(prompts) != len(images):
            raise RequestError("Mismatch between number of images and prompts")
        params = self._parameters(payload)
        built = [
            self._build_prompt(p, image, i) for i, (p, image) in enumerate(zip(prompts, images, strict=True))
        ]
        return images, built, params

    @staticmethod
    def _build_prompt(prompt: dict[str, Any], image: np.ndarray, i: int) -> str:
        task = prompt.get("task_prompt")
        if not isinstance(task, str):
            raise RequestError(f"Missing 'task_prompt' in prompt {i}")
        tag = task if task in _TASKS else task_of(task)
        if tag is None:
            raise RequestError(f"Invalid prompt format: {task}. Accepted formats: {list(_TASKS)}")
        args = prompt.get("prompt_args") or {}
        if not isinstance(args, dict):
            raise RequestError(f"Invalid 'prompt_args' in prompt {i}")
        key = _ARG_TASKS.get(tag)
        if key is not None and task == tag:
            value = args.get(key)
            if key == "bbox_xyxy":
                if not isinstance(value, list) or len(value) != 4:
                    raise RequestError(f"Missing or invalid 'bbox_xyxy' in prompt_args for {tag}")
                task = tag + _loc_tokens(value, image.shape[1], image.shape[0])
            else:
                if not isinstance(value, str) or not value:
                    raise RequestError(f"Missing or invalid '{key}' in prompt_args for {tag}")
                task = tag + value
        if task_of(task) is None:
            raise RequestError(f"Invalid prompt format: {task}. Accepted formats: {list(_TASKS)}")
        return task

    def compute(
        self, prepared: tuple[list[np.ndarray], list[str], dict[str, int]]
    ) -> list[tuple[str, dict[str, Any], tuple[int, int]]]:
        import torch

        images, prompts, params = prepared
        results = []
        for batch_images, batch_prompts, inputs in self._processed_batches(
            images, prompts, params["max_batch_size"]
        ):
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=inputs["input_ids"],
                    pixel_values=inputs["pixel_values"],
                    max_new_tokens=params["max_new_tokens"],
                    num_beams=params["num_beams"],
                    do_sample=False,
                    early_stopping=False,
                )
            texts = self.processor.batch_decode(generated, skip_special_tokens=False)
            for text, prompt, image in zip(texts, batch_prompts, batch_images, strict=True):
                task = task_of(prompt)
                parsed = self.processor.post_process_generation(
                    text, task=task, image_size=(image.width, image.height)
                )
                results.append((prompt, parsed, (image.width, image.height)))
        return results

    @staticmethod
    def render(results: list[tuple[str, dict[str, Any], tuple[int, int]]]) -> dict[str, Any]:
        detections: list[list[dict[str, Any]]] = []
        captions: list[str | None] = []
        for prompt, parsed, _size in results:
            task, output = next(iter(parsed.items()))
            if task in _CAPTION_TASKS:
                captions.append(re.sub(r"<pad>|<loc_\d+>|<s>|</s>", "", str(output)).rstrip())
                detections.append([])
                continue
            captions.append(None)
            found: list[dict[str, Any]] = []
            if task in ("<OD>", "<DENSE_REGION_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>"):
                found = [
                    {"box_xyxy": [int(v) for v in b], "label": l}
                    for b, l in zip(output["bboxes"], output["labels"], strict=True)
                ]
            elif task == "<OPEN_VOCABULARY_DETECTION>":
                boxes = list(output["bboxes"]) + [_polygons_box_and_mask(p)[0] for p in output["polygons"]]
                labels = list(output["bboxes_labels"]) + list(output["polygons_labels"])
                found = [
                    {"box_xyxy": [int(v) for v in b], "label": l} for b, l in zip(boxes, labels, strict=True)
                ]
            elif task == "<REGION_PROPOSAL>":
                found = [{"box_xyxy": [int(v) for v in b]} for b in output["bboxes"]]
            elif task in ("<REGION_TO_SEGMENTATION>", "<REFERRING_EXPRESSION_SEGMENTATION>"):
                label = prompt[len(task) :]
                for polygons in output["polygons"]:
                    if not polygons:
                        continue
                    box, mask = _polygons_box_and_mask(polygons)
                    entry: dict[str, Any] = {"box_xyxy": box, "mask": encode_mask_png(mask)}
                    if task == "<REFERRING_EXPRESSION_SEGMENTATION>":
                        entry["label"] = label
                    found.append(entry)
            elif task == "<OCR_WITH_REGION>":
                for quad, label in zip(output["quad_boxes"], output["labels"], strict=True):
                    xs, ys = np.asarray(quad[0::2], dtype=float), np.asarray(quad[1::2], dtype=float)
                    box = [
                        int(np.floor(xs.min())),
                        int(np.floor(ys.min())),
                        int(np.ceil(xs.max())),
                        int(np.ceil(ys.max())),
                    ]
                    found.append({"box_xyxy": box, "label": re.sub(r"<pad>|<loc_\d+>", "", label).rstrip()})
            detections.append(found)
        return {"artifact": {"detections": detections, "captions": captions, "model": "florence2"}}
