"""``sam3``: SAM 3 promptable concept segmentation (text prompts → every matching instance).

A new family, not one of the authors' servers; its API follows theirs (the shape of
``mmgroundingdino``'s ``/infer`` and of SAM 2's masks) so that a client of one reads the other:

Request (``POST /infer``)::

    {"images": ["<b64>", ...] | "<b64>",
     "inference_parameters": [{"prompts": ["a red chair", ...] | "<prompt>",
                               "min_confidence": 0.5, "mask_threshold": 0.5,
                               "max_detections_per_prompt": null}, ...] | {...}}

(one parameter set per image, one for all, or one image for several, as for ``mmgroundingdino``).

Response::

    {"artifact": {"detections": [[{"prompt": str, "confidence": float,
                                   "box_xyxy": [int ×4],            # SAM 3's box, pixels, truncated
                                   "mask_box_xyxy": [int ×4] | null, # the mask's box, max inclusive
                                   "mask": "<b64 PNG>" | null},      # mask[y1:y2, x1:x2] of that box
                                  ...] per image],
                  "model": "sam3",
                  "metadata": [{"image_width": W, "image_height": H} per image]}}

Per image and prompt, every query whose score (sigmoid of its logit × sigmoid of the presence logit,
as transformers' ``post_process_instance_segmentation``) is above ``min_confidence`` is returned,
best first (at most ``max_detections_per_prompt`` when it is set), prompts in request order; a prompt
given twice is answered once. Masks are the
mask logits' sigmoid at full resolution above ``mask_threshold``, encoded as SAM 2's are (:mod:`._codec`).

Batching: the images of a request go through the vision encoder together (``--max-batch-size`` at a
time), each text prompt through the text encoder once, and all prompts of one image are one batch of
the detector and mask decoder on that image's single vision pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..protocol.vision_requests import (
    one_image_per_parameter_set,
    per_image_parameters,
    request_images,
    sam3_parameter_set,
)
from ._codec import decode_images, encode_mask_crops
from .app import RequestError, TextPromptedFamily

__all__ = ["FLAVORS", "Sam3"]

FLAVORS: dict[str, str] = {"sam3": "facebook/sam3"}
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEXT_TOKENS = 32  # the CLIP text encoder's positions, as Sam3Processor pads


@dataclass
class _ImageJob:
    image: np.ndarray
    prompts: list[str]  # unique, request order
    min_confidence: float
    mask_threshold: float
    max_detections: int | None


class Sam3(TextPromptedFamily):
    name = "sam3"
    flavors = FLAVORS

    def load_model(self, flavor: str, payload: dict[str, Any]) -> None:
        if self.runtime.random_weights:
            from ._tiny import tiny_clip_tokenizer, tiny_sam3

            tokenizer = tiny_clip_tokenizer()
            if self.runtime.random_size == "full":
                from ._tiny import full_sam3

                model = full_sam3(self.runtime.seed)
            else:
                model = tiny_sam3(self.runtime.seed, vocab_size=len(tokenizer))
        else:
            from transformers import AutoTokenizer, Sam3Model

            model = self.load_pretrained(Sam3Model, flavor)
            tokenizer = self.load_pretrained(AutoTokenizer, flavor)
        self.use_model(model)
        self.tokenizer = tokenizer

    # -- request (thread pool) -------------------------------------------------------------------
    @staticmethod
    def prepare(payload: dict[str, Any]) -> list[_ImageJob]:
        images = request_images(payload, RequestError)
        params = per_image_parameters(payload, images, RequestError)
        parsed = [sam3_parameter_set(i, p, RequestError) for i, p in enumerate(params)]
        decoded = one_image_per_parameter_set(decode_images(images), parsed)
        return [_ImageJob(image, *p) for image, p in zip(decoded, parsed, strict=True)]

    # -- the model (model thread) ----------------------------------------------------------------
    def _pixels(self, images: list[np.ndarray]) -> Any:
        import torch
        import torch.nn.functional as F

        size = self.model.config.vision_config.backbone_config.image_size
        batch = []
        for image in images:
            t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
            batch.append(F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0])
        pixels = torch.stack(batch) / 255.0
        mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.dtype)

    def compute(self, jobs: list[_ImageJob]) -> list[tuple[list[dict[str, Any]], Any, tuple[int, int]]]:
        import torch
        import torch.nn.functional as F
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        prompts = list(dict.fromkeys(p for job in jobs for p in job.prompts))
        results: list[tuple[list[dict[str, Any]], Any, tuple[int, int]]] = []
        with torch.inference_mode():
            text_embeds = None
            if prompts:
                text = self.tokenizer(
                    prompts,
                    padding="max_length",
                    truncation=True,
                    max_length=TEXT_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                text_embeds = self.model.get_text_features(
                    input_ids=text.input_ids, attention_mask=text.attention_mask
                )
                text_index = {p: i for i, p in enumerate(prompts)}
            for start in range(0, len(jobs), self.max_batch_size):
                group = jobs[start : start + self.max_batch_size]
                vision = self.model.get_vision_features(self._pixels([job.image for job in group]))
                for g, job in enumerate(group):
                    height, width = job.image.shape[:2]
                    if not job.prompts:
                        results.append(([], None, (width, height)))
                        continue
                    assert text_embeds is not None, "a job with prompts means the prompt list was embedded"
                    rows = torch.tensor([text_index[p] for p in job.prompts], device=self.device)
                    n = len(job.prompts)
                    embeds = Sam3VisionEncoderOutput(
                        fpn_hidden_states=tuple(
                            x[g : g + 1].expand(n, -1, -1, -1) for x in vision.fpn_hidden_states
                        ),
                        fpn_position_encoding=tuple(
                            x[g : g + 1].expand(n, -1, -1, -1) for x in vision.fpn_position_encoding
                        ),
                    )
                    text_rows = SimpleNamespace(
                        pooler_output=text_embeds.pooler_output[rows]
                    )  # what forward reads
                    out = self.model(
                        vision_embeds=embeds, text_embeds=text_rows, attention_mask=text.attention_mask[rows]
                    )
                    scores = out.pred_logits.float().sigmoid()
                    if out.presence_logits is not None:
                        scores = scores * out.presence_logits.float().sigmoid()
                    found, masks = [], []
                    scale = torch.tensor(
                        [width, height, width, height], device=self.device, dtype=torch.float32
                    )
                    for r, prompt in enumerate(job.prompts):
                        keep = torch.nonzero(scores[r] > job.min_confidence).flatten()
                        keep = keep[scores[r][keep].argsort(descending=True)][: job.max_detections]
                        if not keep.numel():
                            continue
                        boxes = (out.pred_boxes[r][keep].float() * scale).clamp(min=0)
                        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
                        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
                        logits = F.interpolate(
                            out.pred_masks[r][keep][None].float(),
                            size=(height, width),
                            mode="bilinear",
                            align_corners=False,
                        )[0]
                        masks.append(logits.sigmoid() > job.mask_threshold)
                        for score, box in zip(scores[r][keep].tolist(), boxes.tolist(), strict=True):
                            found.append(
                                {
                                    "prompt": prompt,
                                    "confidence": float(score),
                                    "box_xyxy": [int(v) for v in box],
                                }
                            )
                    all_masks = torch.cat(masks) if masks else None
                    results.append((found, all_masks, (width, height)))
        return results

    # -- the response (thread pool) --------------------------------------------------------------
    @staticmethod
    def render(results: list[tuple[list[dict[str, Any]], Any, tuple[int, int]]]) -> dict[str, Any]:
        detections, metadata = [], []
        for found, masks, (width, height) in results:
            encoded = encode_mask_crops(masks) if masks is not None else []
            for entry, crop in zip(found, encoded, strict=True):
                entry["mask_box_xyxy"], entry["mask"] = crop if crop is not None else (None, None)
            detections.append(found)
            metadata.append({"image_width": width, "image_height": height})
        return {"artifact": {"detections": detections, "model": "sam3", "metadata": metadata}}
