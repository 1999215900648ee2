"""``kosmos2``: Kosmos-2 grounded captions, as the authors' server runs it.

Request (``POST /infer``)::

    {"images": ["<b64>", ...] | "<b64>",
     "prompts": ["<grounding> Describe this image in detail:", ...] | "<prompt>",   # default "<grounding> An image of"
     "inference_parameters": {"max_new_tokens": 64, "max_batch_size": 16}}

One prompt for all images or one per image; a prompt must be one of Kosmos-2's four forms
(``<grounding> An image of…``, ``<grounding> Describe this image in detail:…``,
``<grounding> Question: … Answer:``, ``<grounding><phrase> … </phrase>``). Other inference parameters
(the paper sends ``num_beams``) are accepted and ignored, as on the real server.

Response ``{"artifact": {"detections": [[{"box_xyxy": [int ×4], "label": <entity phrase>}, ...] per
image], "captions": [<caption> per image], "model": "kosmos2"}}``: one detection per entity box, the
normalised boxes × (W, H) truncated to int, as the real server computes them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .app import RequestError
from .florence2 import _Generative

__all__ = ["FLAVORS", "Kosmos2", "prompt_form"]

FLAVORS: dict[str, str] = {"patch14-224": "microsoft/kosmos-2-patch14-224"}
DEFAULT_PROMPT = "<grounding> An image of"
_FORMS = {
    "caption_brief": re.compile(r"^\s*<grounding>\s*An image of(?:\s+.*)?\s*$", re.I),
    "caption_detailed": re.compile(r"^\s*<grounding>\s*Describe this image in detail:(?:\s+.*)?\s*$", re.I),
    "grounded_vqa": re.compile(r"^\s*<grounding>\s*Question:\s*.+?\s*Answer:\s*$", re.I),
    "phrase_grounding": re.compile(r"^\s*<grounding>\s*<phrase>\s*.+?\s*</phrase>\s*$", re.I | re.S),
}


def prompt_form(prompt: str) -> str | None:
    """Which of Kosmos-2's prompt forms ``prompt`` is, or None.

    >>> prompt_form("<grounding> Describe this image in detail:"), prompt_form("Describe it")
    ('caption_detailed', None)
    """
    for name, pattern in _FORMS.items():
        if pattern.fullmatch(prompt):
            return name
    return None


class Kosmos2(_Generative):
    name = "kosmos2"
    flavors = FLAVORS
    defaults = {"max_new_tokens": 64, "max_batch_size": 16}

    def model_class(self) -> Any:
        from transformers import Kosmos2ForConditionalGeneration

        return Kosmos2ForConditionalGeneration

    @staticmethod
    def tiny_random_model(seed: int) -> tuple[Any, Any]:
        from ._tiny import tiny_kosmos2

        return tiny_kosmos2(seed)

    def prepare(self, payload: dict[str, Any]) -> tuple[list[np.ndarray], list[str], dict[str, int]]:
        images = self._images(payload)
        prompts = payload.get("prompts")
        if prompts is None:
            prompts = [DEFAULT_PROMPT]
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError("Invalid 'prompts' in payload")
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        for prompt in prompts:
            if prompt_form(prompt) is None:
                raise RequestError(f"Invalid prompt format: {prompt}. Accepted formats: {list(_FORMS)}")
        if len(prompts) != len(images):
            raise RequestError("Mismatch between number of images and prompts")
        return images, prompts, self._parameters(payload)

    def compute(self, prepared: tuple[list[np.ndarray], list[str], dict[str, int]]) -> list[dict[str, Any]]:
        import torch

        images, prompts, params = prepared
        results = []
        for batch_images, _prompts, inputs in self._processed_batches(
            images, prompts, params["max_batch_size"]
        ):
            with torch.inference_mode():
                generated = self.model.generate(
                    pixel_values=inputs["pixel_values"],
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    image_embeds=None,
                    image_embeds_position_mask=inputs["image_embeds_position_mask"],
                    use_cache=True,
                    max_new_tokens=params["max_new_tokens"],
                )
            for text, image in zip(
                self.processor.batch_decode(generated, skip_special_tokens=True), batch_images, strict=True
            ):
                caption, entities = self.processor.post_process_generation(text)
                boxes, labels = [], []
                for label, _span, entity_boxes in entities:
                    for x1, y1, x2, y2 in entity_boxes:
                        w, h = image.width, image.height
                        boxes.append([int(x1 * w), int(y1 * h), int(x2 * w), int(y2 * h)])
                        labels.append(label)
                results.append({"boxes": boxes, "labels": labels, "caption": caption})
        return results

    @staticmethod
    def render(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "artifact": {
                "detections": [
                    [{"box_xyxy": b, "label": l} for b, l in zip(r["boxes"], r["labels"], strict=True)]
                    for r in results
                ],
                "captions": [r["caption"] for r in results],
                "model": "kosmos2",
            }
        }
