"""``mmgroundingdino``: MM-Grounding-DINO and LLMDet, as the authors' server runs them (on mmdet).

Request (``POST /infer``), as the real server's ``Model.preprocess`` reads it::

    {"images": ["<b64>", ...] | "<b64>",
     "inference_parameters": [{"prompts": [...] | "<prompt>", "min_confidence": 0.05,
                               "nms_iou": null, "overdetect_factor": null}, ...] | {...}}

One parameter set per image, one for all images, or one image for several parameter sets. Defaults
and checks are the real server's: ``min_confidence`` 0.05 and must be a float (an int is refused),
``nms_iou`` and ``overdetect_factor`` null or float.

Per image, as the real server does it:

1. prompts are de-duplicated (first occurrence order) and counted;
2. the unique prompts are split into chunks of at most 1,000 characters (``chunk_prompts``: the width
   with the smallest remainder, ties to the wider, width 1 only when nothing else fits); each chunk is
   one caption ``"p1. p2. ... pk. "`` with one entity per prompt (mmdet's ``custom_entities``; names
   cleaned as mmdet's ``clean_label_name`` cleans them);
3. per chunk, the detector scores every (query, entity) pair by the mean sigmoid of the entity's tokens
   and keeps the 300 best pairs (mmdet's ``max_per_img``), boxes in image pixels clamped to the image;
4. ``select_detections`` (the server's ``filter_detections``): ``> min_confidence``, optional
   class-agnostic NMS, one box per prompt occurrence, padding to ``ceil(n × overdetect_factor)``.

Steps 1, 2 and 4 are :mod:`vlm_gist_dagster.protocol.gdino_selection`, which the simulator applies too.

Response: ``{"artifact": {"detections": [[{"box_xyxy": [int ×4] (truncated), "confidence": float,
"prompt": str}, ...] per image], "model": "mmgroundingdino"}}``.

Batching: every (image, chunk) pair of a request is one row of a batched forward pass (at most
``--max-batch-size`` rows at a time), so several images per ``/infer`` share the model's passes.
Deliberate difference: the real server splits a prompt that itself contains ". " into two entities
(mmdet splits the caption on ". "), shifting every later label; here each prompt is one entity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.gdino_selection import DetectorBox, chunk_prompts, select_detections
from ..protocol.vision_requests import one_image_per_parameter_set, per_image_parameters, request_images
from ._codec import decode_images
from .app import RequestError, TextPromptedFamily

__all__ = ["FLAVORS", "MMGroundingDino", "clean_label_name"]

#: flavour → Hugging Face model id (the real server's mmdet checkpoint of the same training data).
FLAVORS: dict[str, str] = {
    "tiny": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_grit_v3det",
    "base": "openmmlab-community/mm_grounding_dino_base_all",
    "large": "openmmlab-community/mm_grounding_dino_large_all",
    "large_zeroshot": "openmmlab-community/mm_grounding_dino_large_o365v2_oiv6_goldg",
    "llmdet_tiny": "iSEE-Laboratory/llmdet_tiny",
    "llmdet_base": "iSEE-Laboratory/llmdet_base",
    "llmdet_large": "iSEE-Laboratory/llmdet_large",
}

MAX_PER_IMAGE = 300  # mmdet test_cfg.max_per_img of the MM-Grounding-DINO configs
MAX_TEXT_TOKENS = 256
# mmdet's data preprocessor for these configs: FixScaleResize (800, 1333) keeping the aspect ratio,
# then (x − mean) / std on RGB 0–255.
SHORT_EDGE, LONG_EDGE = 800, 1333
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def clean_label_name(name: str) -> str:
    """mmdet's ``clean_label_name``: drop ``(...)``, underscores to spaces, double spaces to one.

    >>> clean_label_name("cup_(drinking container)")
    'cup '
    """
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    return re.sub(r"  ", " ", name)


@dataclass
class _ImageJob:
    image: np.ndarray
    prompts: list[str]  # with duplicates, as requested
    unique: list[str]
    min_confidence: float
    nms_iou: float | None
    overdetect_factor: float | None


class MMGroundingDino(TextPromptedFamily):
    name = "mmgroundingdino"
    flavors = FLAVORS

    def load_model(self, flavor: str, payload: dict[str, Any]) -> None:
        if self.runtime.random_weights:
            from ._tiny import full_mm_grounding_dino, tiny_bert_tokenizer, tiny_mm_grounding_dino

            build = full_mm_grounding_dino if self.runtime.random_size == "full" else tiny_mm_grounding_dino
            model = build(self.runtime.seed)
            tokenizer = tiny_bert_tokenizer()
        else:
            from transformers import AutoTokenizer, MMGroundingDinoForObjectDetection

            model = self.load_pretrained(MMGroundingDinoForObjectDetection, flavor)
            tokenizer = self.load_pretrained(AutoTokenizer, flavor)
        self.use_model(model)
        self.tokenizer = tokenizer

    # -- request parsing (thread pool) -----------------------------------------------------------
    def prepare(self, payload: dict[str, Any]) -> list[_ImageJob]:
        if payload.get("inference_parameters") is None:  # the real server reads the parameters first
            raise RequestError("Missing 'inference_parameters' in payload")
        images = request_images(payload, RequestError)
        parsed = [
            self._parse_params(i, p)
            for i, p in enumerate(per_image_parameters(payload, images, RequestError))
        ]
        decoded = one_image_per_parameter_set(decode_images(images), parsed)
        return [_ImageJob(image, *p) for image, p in zip(decoded, parsed, strict=True)]

    @staticmethod
    def _parse_params(i: int, params: Any) -> tuple:
        if not isinstance(params, dict):
            raise RequestError(f"Invalid 'inference_parameters[{i}]' in payload: expected an object")
        if "prompts" not in params:
            raise RequestError(f"Missing 'prompts' in inference_parameters[{i}]")
        prompts = params["prompts"]
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError(f"Invalid 'prompts' in inference_parameters[{i}]")
        min_confidence = params.get("min_confidence", 0.05)
        if not isinstance(min_confidence, float):
            raise RequestError(f"Invalid 'min_confidence' in inference_parameters[{i}]")
        nms_iou = params.get("nms_iou")
        if nms_iou is not None and not isinstance(nms_iou, float):
            raise RequestError(f"Invalid 'nms_iou' in inference_parameters[{i}]")
        factor = params.get("overdetect_factor")
        if factor is not None and not isinstance(factor, float):
            raise RequestError(f"Invalid 'overdetect_factor' in inference_parameters[{i}]")
        unique = list(dict.fromkeys(prompts))
        return prompts, unique, min_confidence, nms_iou, factor

    # -- the model (model thread) ----------------------------------------------------------------
    def compute(self, jobs: list[_ImageJob]) -> list[list[DetectorBox]]:
        """Raw detections per image, then the server's selection rule."""
        rows: list[tuple[int, list[str]]] = []  # (job index, the chunk's unique prompts)
        for j, job in enumerate(jobs):
            if not job.unique:
                continue
            rows.extend((j, chunk) for chunk in chunk_prompts(job.unique))
        raw: list[list[DetectorBox]] = [[] for _ in jobs]
        pixels = {}
        for start in range(0, len(rows), self.max_batch_size):
            batch = rows[start : start + self.max_batch_size]
            for j, _ in batch:
                if j not in pixels:
                    pixels[j] = self.preprocess(jobs[j].image)
            for (j, chunk), found in zip(
                batch, self.detect([pixels[j] for j, _ in batch], [c for _, c in batch]), strict=True
            ):
                height, width = jobs[j].image.shape[:2]
                raw[j].extend(self._to_boxes(found, chunk, width, height))
        return [
            select_detections(
                boxes,
                job.prompts,
                min_confidence=job.min_confidence,
                nms_iou=job.nms_iou,
                overdetect_factor=job.overdetect_factor,
            )
            for boxes, job in zip(raw, jobs, strict=True)
        ]

    def preprocess(self, image: np.ndarray) -> Any:
        """RGB uint8 image → normalised float tensor on the device, resized as mmdet's FixScaleResize."""
        import torch
        import torch.nn.functional as F

        height, width = image.shape[:2]
        scale = min(SHORT_EDGE / min(height, width), LONG_EDGE / max(height, width))
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        return ((tensor - mean) / std)[0]

    def detect(self, pixels: list[Any], chunks: list[list[str]]) -> list[tuple[Any, Any, Any]]:
        """One batched forward pass: per row ``(scores (k,), entity index (k,), boxes cxcywh (k, 4))``."""
        import torch

        height = max(p.shape[1] for p in pixels)
        width = max(p.shape[2] for p in pixels)
        batch = torch.zeros(len(pixels), 3, height, width, device=self.device)
        mask = torch.zeros(len(pixels), height, width, dtype=torch.long, device=self.device)
        for i, p in enumerate(pixels):
            batch[i, :, : p.shape[1], : p.shape[2]] = p
            mask[i, : p.shape[1], : p.shape[2]] = 1
        captions, spans = [], []
        for chunk in chunks:
            caption, entity_spans = "", []
            for prompt in chunk:  # mmdet's to_plain_text_prompts: "p1. p2. ... pk. "
                name = clean_label_name(prompt)
                entity_spans.append((len(caption), len(caption) + len(name)))
                caption += name + ". "
            captions.append(caption)
            spans.append(entity_spans)
        text = self.tokenizer(
            captions,
            padding="longest",
            truncation=True,
            max_length=MAX_TEXT_TOKENS,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = text.pop("offset_mapping")
        text = {k: v.to(self.device) for k, v in text.items()}
        with torch.inference_mode():
            out = self.model(pixel_values=batch.to(self.dtype), pixel_mask=mask, **text)
        probs = out.logits.float().sigmoid()  # (rows, queries, 256)
        boxes = out.pred_boxes.float()  # (rows, queries, 4) cx cy w h, relative to each image
        results = []
        for row, entity_spans in enumerate(spans):
            starts, ends = offsets[row, :, 0], offsets[row, :, 1]
            real = ends > starts
            columns, entities = [], []
            for e, (begin, end) in enumerate(entity_spans):
                tokens = torch.nonzero(real & (starts < end) & (ends > begin)).flatten()
                if tokens.numel():  # an entity truncated away (past 256 tokens) cannot be detected
                    columns.append(probs[row][:, tokens.to(self.device)].mean(dim=-1))
                    entities.append(e)
            if not columns:
                results.append((torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, 4)))
                continue
            scores = torch.stack(columns, dim=1)  # (queries, entities)
            k = min(MAX_PER_IMAGE, scores.numel())
            top, index = scores.flatten().topk(k)
            entity = torch.tensor(entities, device=self.device)[index % scores.shape[1]]
            query = index // scores.shape[1]
            results.append((top.cpu(), entity.cpu(), boxes[row][query].cpu()))
        return results

    @staticmethod
    def _to_boxes(
        found: tuple[Any, Any, Any], chunk: list[str], width: int, height: int
    ) -> list[DetectorBox]:
        scores, entity, cxcywh = found
        if not len(scores):
            return []
        cx, cy, w, h = cxcywh.unbind(-1)
        xyxy = np.stack(
            [
                ((cx - w / 2) * width).clamp(0, width).numpy(),
                ((cy - h / 2) * height).clamp(0, height).numpy(),
                ((cx + w / 2) * width).clamp(0, width).numpy(),
                ((cy + h / 2) * height).clamp(0, height).numpy(),
            ],
            axis=1,
        ).astype(np.float64)
        return [
            DetectorBox(chunk[int(e)], (float(x1), float(y1), float(x2), float(y2)), float(s))
            for s, e, (x1, y1, x2, y2) in zip(scores.tolist(), entity.tolist(), xyxy, strict=True)
        ]

    # -- the response (thread pool) --------------------------------------------------------------
    @staticmethod
    def render(selected: list[list[DetectorBox]]) -> dict[str, Any]:
        detections = [
            [
                {
                    "box_xyxy": [int(v) for v in d.box_xyxy],  # the server's tensor.int(): truncation
                    "confidence": float(d.confidence),
                    "prompt": d.prompt,
                }
                for d in boxes
            ]
            for boxes in selected
        ]
        return {"artifact": {"detections": detections, "model": "mmgroundingdino"}}
