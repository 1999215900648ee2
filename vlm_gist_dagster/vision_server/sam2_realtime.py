"""``sam2_realtime``: SAM 2.1 with the real server's tracking semantics, on transformers' SAM 2 video model.

The real server wraps the "segment-anything-2-real-time" camera predictor; one global tracker:

* ``POST /update`` ``{"image": "<b64>", "prompts": [{"object_id": int, "bbox": [x1, y1, x2, y2]} |
  {"object_id": int, "points": [[x, y], ...], "labels": [1 | 0, ...]}, ...] | {...}, "reset_tracks": bool}``
  always resets the tracker (``reset_tracks`` is accepted and, as on the real server, ignored), makes
  the image frame 0, adds every prompt (a ``bbox`` wins over points) and answers the masks of frame 0;
* ``POST /infer`` ``{"images": ["<b64>", ...] | "<b64>"}`` tracks the objects into each image in turn
  (frame 1, 2, ...), one list of tracks per image; an empty ``tracks`` list when the tracker was never
  initialised;
* ``POST /reset`` → ``{"reset": true}``.

Both answer ``{"artifact": {"tracks": [[{"box_xyxy": [x1, y1, x2, y2], "mask": "<b64 PNG>",
"track_id": int}, ...] per image], "model": "sam2_realtime", "metadata": [{"image_width": W,
"image_height": H} | null per image]}}``: masks are logits > 0 at full image resolution, boxes and
crops as in :mod:`._codec` (empty masks dropped). ``/status`` reports ``{"flavor", "tracker_initialized"}``
as the real server's ``get_status`` is written (its ``load`` forgets to set the flavour, so the public
server always answers ``null``; the authors' client needs the fields and reads them).

Memory stays bounded on long streams: frames and per-frame outputs older than the model's memory
window (``num_maskmem`` frames, ``max_object_pointers_in_encoder`` pointers) are dropped after each
tracked frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.vision_requests import listed_field, request_images
from ._codec import decode_image, decode_images, encode_mask_crops
from .app import ModelFamily, RequestError, Stage

__all__ = ["FLAVORS", "Sam2Realtime"]

FLAVORS: dict[str, str] = {
    "tiny": "facebook/sam2.1-hiera-tiny",
    "small": "facebook/sam2.1-hiera-small",
    "base": "facebook/sam2.1-hiera-base-plus",
    "large": "facebook/sam2.1-hiera-large",
}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class _Prompt:
    object_id: int
    points: np.ndarray  # (n, 2) pixel coordinates
    labels: np.ndarray  # (n,): 2/3 box corners, 1 positive, 0 negative point


class Sam2Realtime(ModelFamily):
    name = "sam2_realtime"
    flavors = FLAVORS

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.session: Any = None
        self.frame_index = 0

    def load_model(self, flavor: str, payload: dict[str, Any]) -> None:
        if self.runtime.random_weights:
            from ._tiny import full_sam2_video, tiny_sam2_video

            model = (full_sam2_video if self.runtime.random_size == "full" else tiny_sam2_video)(
                self.runtime.seed
            )
        else:
            from transformers import Sam2VideoModel

            model = self.load_pretrained(Sam2VideoModel, flavor)
        self.use_model(model)
        self.session = None

    def unload(self) -> None:
        self.session = None
        super().unload()

    def status(self) -> dict[str, Any] | None:
        status = super().status()
        if status is not None:
            status["tracker_initialized"] = self.session is not None
        return status

    def stages(self) -> dict[str, Stage]:
        return {
            "/infer": Stage(self.prepare_track, self.track, self.render),
            "/update": Stage(self.prepare_update, self.update, self.render, failure="Update failed"),
        }

    def extra_routes(self) -> dict[str, Any]:
        return {"/reset": self.reset}

    # -- requests (thread pool) ------------------------------------------------------------------
    @staticmethod
    def prepare_track(payload: dict[str, Any]) -> list[np.ndarray]:
        return decode_images(request_images(payload, RequestError))

    @staticmethod
    def prepare_update(payload: dict[str, Any]) -> tuple[np.ndarray, list[_Prompt]]:
        image = payload.get("image")
        if image is None:
            raise RequestError("Missing 'image' in payload")
        prompts = listed_field(payload, "prompts", dict, RequestError)
        if not prompts:
            raise RequestError("'prompts' is empty: /update needs at least one prompt")
        parsed = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, dict) or "object_id" not in prompt:
                raise RequestError(f"Missing 'object_id' in prompt {i}")
            object_id = prompt["object_id"]
            if isinstance(object_id, bool) or not isinstance(object_id, int):
                raise RequestError(f"Invalid 'object_id' in prompt {i}: expected an integer")
            if "bbox" in prompt:
                bbox = prompt["bbox"]
                if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                    raise RequestError(f"Invalid 'bbox' in prompt {i}")
                points = np.asarray(bbox, dtype=np.float32).reshape(2, 2)
                labels = np.asarray([2, 3], dtype=np.int32)
            elif "points" in prompt and "labels" in prompt:
                points, labels = prompt["points"], prompt["labels"]
                if not isinstance(points, list) or not points:
                    raise RequestError(f"Invalid 'points' in prompt {i}")
                points = np.asarray(points, dtype=np.float32)
                if points.ndim != 2 or points.shape[1] != 2:
                    raise RequestError(f"Invalid 'points' in prompt {i}")
                if (
                    not isinstance(labels, list)
                    or len(labels) != len(points)
                    or not all(v in (0, 1) for v in labels)
                ):
                    raise RequestError(f"Invalid 'labels' in prompt {i}")
                labels = np.asarray(labels, dtype=np.int32)
            else:
                raise RequestError(f"Missing 'bbox' or 'points' and 'labels' in prompt {i}")
            parsed.append(_Prompt(object_id, points, labels))
        return decode_image(image, "image"), parsed

    # -- the tracker (model thread) --------------------------------------------------------------
    def _pixels(self, image: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        size = self.model.config.image_size
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False) / 255.0
        mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        return ((tensor - mean) / std)[0].to(self.dtype)

    def update(
        self, prepared: tuple[np.ndarray, list[_Prompt]]
    ) -> list[tuple[list[int], Any, tuple[int, int]]]:
        import torch
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        image, prompts = prepared
        height, width = image.shape[:2]
        self.session = None  # the real server always resets: frame 0, every prompt added anew
        session = Sam2VideoInferenceSession(
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
        )
        session.add_new_frame(self._pixels(image), frame_idx=0)
        session.video_height, session.video_width = height, width
        size = self.model.config.image_size
        scale = np.asarray([size / width, size / height], dtype=np.float32)
        object_ids = []
        for prompt in prompts:  # as Sam2VideoProcessor.add_inputs_to_inference_session stores them
            obj_idx = session.obj_id_to_idx(prompt.object_id)
            coords = torch.from_numpy(prompt.points * scale)[None, None]
            labels = torch.from_numpy(prompt.labels)[None, None]
            session.add_point_inputs(obj_idx, 0, {"point_coords": coords, "point_labels": labels})
            session.remove_mask_inputs(obj_idx, 0)
            if prompt.object_id not in object_ids:
                object_ids.append(prompt.object_id)
        session.obj_with_new_inputs = list(object_ids)
        with torch.inference_mode():
            out = self.model(inference_session=session, frame_idx=0)
        self.session = session
        self.frame_index = 0
        return [self._frame_result(out, height, width)]

    def track(self, images: list[np.ndarray]) -> list[tuple[list[int], Any, tuple[int, int]]]:
        import torch

        if self.session is None:
            return []
        results = []
        for image in images:
            height, width = image.shape[:2]
            self.frame_index += 1
            with torch.inference_mode():
                out = self.model(
                    inference_session=self.session, frame_idx=self.frame_index, frame=self._pixels(image)
                )
            results.append(self._frame_result(out, height, width))
            self._forget_old_frames()
        return results

    def reset(self) -> dict[str, Any]:
        self.session = None
        self.frame_index = 0
        return {"reset": True}

    def _frame_result(self, out: Any, height: int, width: int) -> tuple[list[int], Any, tuple[int, int]]:
        import torch
        import torch.nn.functional as F

        logits = out.pred_masks
        if logits.dim() == 3:
            logits = logits[:, None]
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        masks = torch.nan_to_num(logits[:, 0], nan=0.0) > 0.0
        return [int(i) for i in out.object_ids], masks, (width, height)

    def _forget_old_frames(self) -> None:
        """Drop what the memory can no longer reach (old frames' pixels and outputs)."""
        session, config = self.session, self.model.config
        keep = max(config.num_maskmem, config.max_object_pointers_in_encoder) + 1
        oldest = self.frame_index - keep
        for frame in [f for f in session.processed_frames if 0 < f < self.frame_index]:
            del session.processed_frames[frame]
        for obj_idx, outputs in session.output_dict_per_obj.items():
            for frame in [f for f in outputs["non_cond_frame_outputs"] if f < oldest]:
                del outputs["non_cond_frame_outputs"][frame]
            tracked = session.frames_tracked_per_obj.get(obj_idx, {})
            for frame in [f for f in tracked if f < oldest]:
                del tracked[frame]

    # -- the response (thread pool) --------------------------------------------------------------
    @staticmethod
    def render(frames: list[tuple[list[int], Any, tuple[int, int]]]) -> dict[str, Any]:
        tracks, metadata = [], []
        for object_ids, masks, (width, height) in frames:
            entries = []
            for object_id, encoded in zip(object_ids, encode_mask_crops(masks), strict=True):
                if encoded is not None:  # empty masks: box outside the image on the real server, dropped
                    box, png = encoded
                    entries.append({"box_xyxy": box, "mask": png, "track_id": object_id})
            tracks.append(entries)
            metadata.append({"image_width": width, "image_height": height} if object_ids else None)
        return {"artifact": {"tracks": tracks, "model": "sam2_realtime", "metadata": metadata}}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
