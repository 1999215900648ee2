"""Stage B for one (model, dataset) pair: MM-Grounding-DINO boxes (``run_detections``) and SAM2 masks
(``run_masks``); for baselines, Florence-2 / Kosmos-2 boxes and their SAM2 masks (docs/protocol/pipeline.md §4, §6).

A VLM model file may choose another grounding mode (``protocol.settings.grounding``): ``sam3`` sends each
described object's name (or description) to SAM 3, whose boxes are the detections and whose masks the
``masks`` stage reads from the same, cached, SAM 3 response; ``vlm_boxes`` uses the boxes the VLM returned
in stage A (no vision call, no mask); ``vlm_boxes_sam2`` segments those boxes with SAM2 like the paper's.

Vision responses go through the same on-disk response cache as chat completions (the vision client's
``infer_cached`` / ``segment_cached``), keyed by the server's identity and the request body (image
included), so a re-run or a resumed partition makes no vision call it already made. An image whose call
fails for good (a bad response, or HTTP 500 on every retry) fails alone, with the reason in its rows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pandas as pd

from ..clients.describe import ProgressEvent
from ..clients.errors import (
    AuthenticationError,
    ConfigurationError,
    TransportError,
    TransportRetriesExhausted,
)
from ..clients.vision import vision_image
from ..protocol.baselines import assemble_baseline_detections, baseline_request, parse_baseline_response
from ..protocol.detection import (
    ImageDetections,
    assemble_detections_with_settings,
    gdino_request_with_settings,
    instance_for_description,
    missing_and_over_detections,
    over_detection_flags,
    parse_gdino_response,
)
from ..protocol.detections import MASK_BOX_COLUMNS, Detections
from ..protocol.grounding import (
    box_2d_to_xyxy,
    parse_box_2d,
    parse_sam3_response,
    sam3_classes_request,
    sam3_prompts,
    sam3_request,
    select_sam3,
    suppress_duplicates,
)
from ..protocol.segmentation import parse_sam2_response, sam2_track_request, sam2_update_request
from ..protocol.settings import BaselineSettings, DetectionSettings, GroundingSettings, ModelSettings
from .services import Services, progress_logger
from .tables import DETECTION_IMAGES, DETECTIONS, MASKS

#: Column names of the three tables (their dtypes and meaning: ``stages.tables``).
DETECTION_COLUMNS = DETECTIONS.names
DETECTION_IMAGE_COLUMNS = DETECTION_IMAGES.names
MASK_COLUMNS = MASKS.names

#: Errors that no image would survive: stop the stage at once.
FATAL = (AuthenticationError, ConfigurationError)
#: HTTP statuses a server answers again on every retry of the same request: the NimbRo servers answer
#: 500 for a payload they cannot process (e.g. a one-pixel-wide mask). Once the retry budget is spent the
#: image fails alone (its rows say why) instead of the partition; other exhausted transport errors (429,
#: 502-504, connection errors: a server down or throttling) still fail the partition, to be retried later.
PERMANENT_STATUSES = frozenset({500})


def permanent_server_error(error: object) -> bool:
    """Whether ``error`` is a request the server failed on every try with a :data:`PERMANENT_STATUSES`."""
    return isinstance(error, TransportRetriesExhausted) and error.status in PERMANENT_STATUSES


async def _run_images(
    image_ids: Sequence[str],
    work: Callable[[str], Awaitable[Any]],
    what: str,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Run ``work`` for every image concurrently (the clients bound requests in flight). Per-image
    failures (a bad image or response, a permanent server error) are returned as values; fatal ones and
    transport failures cancel everything. When the server failed permanently on *every* image, that is
    not one bad image but a broken server: the first error is raised."""
    progress = progress_logger(len(image_ids), what, log)
    done = 0
    results: dict[str, Any] = {}

    async def one(image_id: str) -> None:
        nonlocal done
        try:
            results[image_id] = await work(image_id)
            ok = True
        except FATAL:
            raise
        except TransportError as exc:
            if not permanent_server_error(exc):
                raise  # retries exhausted: the partition is retried later; cached results are kept
            results[image_id] = exc
            ok = False
        except Exception as exc:  # noqa: BLE001 - a bad image or response fails alone
            results[image_id] = exc
            ok = False
        done += 1
        if progress is not None:
            progress(ProgressEvent(done, len(image_ids), 0, 0, image_id, ok))

    tasks = [asyncio.create_task(one(i)) for i in image_ids]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    permanent = [r for r in results.values() if permanent_server_error(r)]
    if permanent and len(permanent) == len(results):
        raise permanent[0]
    return results


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------- detections


def prompts_of(objects: Any) -> list[str]:
    """Detector prompts = the description strings, in description order, duplicates kept, empty
    strings dropped (docs/protocol/pipeline.md §4.2; the reference rejects empty prompts)."""
    if objects is None or (isinstance(objects, float) and math.isnan(objects)):
        return []
    return [str(o["description"]) for o in objects if o.get("description")]


def _detection_rows(
    image_id: str,
    prompts: list[str],
    objects: list[dict],
    found: Detections,
    settings: DetectionSettings,
) -> list[dict]:
    """One row per detection of a VLM's image: its box and score, the described object it grounds
    (the first with that description, docs/protocol/pipeline.md §4.4 step 5) and its direct / over-detection flag."""
    labels = found.label.tolist()
    flags = over_detection_flags(
        prompts,
        labels,
        found.confidence.tolist(),
        over_detect=settings.over_detect,
        conf_threshold=settings.conf_threshold,
    )
    rows = []
    for j, (label, box, confidence) in enumerate(zip(labels, found.xyxy.tolist(), found.confidence.tolist())):
        instance = instance_for_description(objects, label)
        index = next(i for i, o in enumerate(objects) if o is instance)
        rows.append(_grounded_row(image_id, j, label, objects, index, box, confidence, bool(flags[j])))
    return rows


def _grounded_row(
    image_id: str,
    detection_index: int,
    prompt: str,
    objects: list[dict],
    index: int,
    box: list[float],
    confidence: float,
    over_detection: bool,
) -> dict:
    """One ``detections`` row: a detection's box and score and the described object (``objects[index]``)
    it grounds."""
    x1, y1, x2, y2 = box
    return {
        "image_id": image_id,
        "detection_index": detection_index,
        "prompt": prompt,
        "object_name": objects[index].get("object_name"),
        "description": objects[index].get("description"),
        "instance_index": index,
        "x1": x1,
        "y1": y1,
        "x2": x2,
        "y2": y2,
        "confidence": confidence,
        "is_over_detection": over_detection,
    }


def _baseline_rows(image_id: str, found: Detections) -> list[dict]:
    """One row per detection of a baseline's image: its label as the object name, no prompt, and no score
    (Florence-2, Kosmos-2) or SAM 3's (``sam3_classes``)."""
    return [
        {
            "image_id": image_id,
            "detection_index": j,
            "prompt": None,
            "object_name": label,
            "description": None,
            "instance_index": None,
            "x1": box[0],
            "y1": box[1],
            "x2": box[2],
            "y2": box[3],
            "confidence": confidence,
            "is_over_detection": None,
        }
        for j, (label, box, confidence) in enumerate(
            zip(found.label.tolist(), found.xyxy.tolist(), found.confidence.tolist())
        )
    ]


def _objects_by_image(descriptions: pd.DataFrame) -> dict[str, list[dict] | None]:
    out: dict[str, list[dict] | None] = {}
    for image_id, success, objects in zip(
        descriptions["image_id"], descriptions["success"], descriptions["objects"]
    ):
        out[image_id] = (
            list(objects)
            if (bool(success) and objects is not None and not isinstance(objects, float))
            else None
        )
    return out


def run_detections(
    images: pd.DataFrame,
    descriptions: pd.DataFrame,
    model: ModelSettings,
    detection: DetectionSettings,
    services: Services,
    *,
    log: Callable[[str], None] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(detections, detection_images)``: one row per detector output, one row per image.

    ``class_names``: the dataset's class names, which a ``sam3`` baseline (``sam3_classes``) prompts SAM 3
    with unless its settings list ``model_classes``."""
    paths = dict(zip(images["image_id"], images["path"]))
    objects = _objects_by_image(descriptions)
    baseline = model.baseline if model.kind == "baseline" else None
    grounding = model.grounding if baseline is None else None
    if grounding is not None and grounding.uses_vlm_boxes:
        return _vlm_box_detections(images, objects, grounding)
    if grounding is not None and grounding.mode == "sam3":
        return _sam3_detections(images, objects, model, grounding, services, log=log)
    family = baseline.model_name if baseline else detection.detector_name
    flavor = baseline.model_flavor if baseline else detection.detector_flavor

    async def main() -> tuple[dict[str, Any], dict[str, list[str]], dict[str, float]]:
        prompts: dict[str, list[str]] = {}
        durations: dict[str, float] = {}
        async with services.vision_client(family) as vision:

            async def work(image_id: str) -> Any:
                start = time.perf_counter()
                try:
                    if baseline is not None:
                        if baseline.model_name == "sam3":
                            body = sam3_classes_request(
                                vision_image(paths[image_id]).base64, baseline, class_names
                            )
                            found = parse_sam3_response(await vision.infer_cached(flavor, body))
                            return suppress_duplicates(found, baseline.model_nms_iou)
                        body = baseline_request(vision_image(paths[image_id]).base64, baseline)
                        return parse_baseline_response(
                            await vision.infer_cached(flavor, body), model=baseline.model_name
                        ).detections
                    p = prompts[image_id]
                    body = gdino_request_with_settings(vision_image(paths[image_id]).base64, p, detection)
                    return parse_gdino_response(await vision.infer_cached(flavor, body), prompts=p)
                finally:
                    durations[image_id] = time.perf_counter() - start

            todo = []
            for image_id in images["image_id"]:
                if baseline is not None:
                    todo.append(image_id)
                    continue
                prompts[image_id] = prompts_of(objects.get(image_id))
                if prompts[image_id]:  # an image without prompts is not sent (docs/protocol/pipeline.md §4.2)
                    todo.append(image_id)
            results = await _run_images(todo, work, f"detections[{model.name}]", log)
            return results, prompts, durations

    results, prompts, durations = asyncio.run(main())
    # The concept prompts a sam3_classes baseline sent, for every image (the masks stage asks the same again).
    sam3_prompts = (
        list(dict.fromkeys(baseline.model_classes or class_names or []))
        if baseline is not None and baseline.model_name == "sam3"
        else None
    )
    det_rows: list[dict] = []
    image_rows: list[dict] = []
    for image_id in images["image_id"]:
        p = prompts.get(image_id, [])
        if sam3_prompts is not None:
            p = list(sam3_prompts)
        result = results.get(image_id)
        error = _error_text(result) if isinstance(result, BaseException) else None
        found = Detections.empty() if (result is None or error) else result
        missing: list[str] = []
        over: list[str] = []
        if baseline is not None:
            rows = _baseline_rows(image_id, found)
        else:
            rows = _detection_rows(image_id, p, objects[image_id] or [], found, detection)
            missing, over = missing_and_over_detections(p, [r["prompt"] for r in rows]) if p else ([], [])
        det_rows.extend(rows)
        image_rows.append(
            {
                "image_id": image_id,
                # baselines have no prompts; for the Ins. column every baseline image counts (docs/protocol/pipeline.md §6)
                "num_prompts": len(p) if baseline is None else (1 if error is None else 0),
                "num_detections": len(rows),
                "prompts": p,
                "missing_prompts": missing,
                "over_detections": over,
                "duration_s": durations.get(image_id, math.nan),
                "error": error,
            }
        )
    return DETECTIONS.from_rows(det_rows), DETECTION_IMAGES.from_rows(image_rows)


# ------------------------------------------------------------------------- other grounding modes


def _image_sizes(images: pd.DataFrame) -> dict[str, tuple[int, int]]:
    return {i: (int(w), int(h)) for i, w, h in zip(images["image_id"], images["width"], images["height"])}


def _image_row(
    image_id: str, prompts: list[str], rows: list[dict], duration: float, error: str | None
) -> dict:
    missing, over = missing_and_over_detections(prompts, [r["prompt"] for r in rows]) if prompts else ([], [])
    return {
        "image_id": image_id,
        "num_prompts": len(prompts),
        "num_detections": len(rows),
        "prompts": prompts,
        "missing_prompts": missing,
        "over_detections": over,
        "duration_s": duration,
        "error": error,
    }


def _vlm_box_detections(
    images: pd.DataFrame, objects: dict[str, list[dict] | None], grounding: GroundingSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``vlm_boxes`` / ``vlm_boxes_sam2``: one detection per described object, its box the VLM's own
    ``box_2d`` in pixels; the prompt is the description (as in the paper's mode), no confidence (the VLM
    gives none), never an over-detection. No vision call, so no time."""
    sizes = _image_sizes(images)
    det_rows: list[dict] = []
    image_rows: list[dict] = []
    for image_id in images["image_id"]:
        described = objects.get(image_id) or []
        width, height = sizes[image_id]
        prompts = [str(o.get("description") or "") for o in described]
        rows: list[dict] = []
        for index, obj in enumerate(described):
            try:
                x1, y1, x2, y2 = box_2d_to_xyxy(
                    parse_box_2d(obj.get(grounding.box_key)), width=width, height=height
                )
            except ValueError:  # stage A validated it; a stored table from elsewhere may not be
                continue
            rows.append(
                {
                    "image_id": image_id,
                    "detection_index": len(rows),
                    "prompt": prompts[index],
                    "object_name": obj.get("object_name"),
                    "description": obj.get("description"),
                    "instance_index": index,
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "confidence": math.nan,
                    "is_over_detection": False,
                }
            )
        det_rows.extend(rows)
        image_rows.append(_image_row(image_id, prompts, rows, math.nan, None))
    return DETECTIONS.from_rows(det_rows), DETECTION_IMAGES.from_rows(image_rows)


def _sam3_rows(
    image_id: str, per_object: list[str], objects: list[dict], found: Detections, over: Any
) -> list[dict]:
    """One row per kept SAM 3 instance (server order). A direct instance grounds the next described object
    with its prompt, best score first; an over-detection the first object with its prompt."""
    labels = found.label.tolist()
    confidences = found.confidence.tolist()
    free: dict[str, list[int]] = {}
    for index, prompt in enumerate(per_object):
        free.setdefault(prompt, []).append(index)
    owner: dict[int, int] = {}
    for j in sorted(range(len(labels)), key=lambda j: -confidences[j]):
        queue = free.get(labels[j], [])
        if not bool(over[j]) and queue:
            owner[j] = queue.pop(0)
    first = {p: per_object.index(p) for p in set(labels) if p in per_object}
    rows = []
    for j, (label, box, confidence) in enumerate(zip(labels, found.xyxy.tolist(), confidences)):
        index = owner.get(j, first[label])
        rows.append(_grounded_row(image_id, j, label, objects, index, box, confidence, bool(over[j])))
    return rows


def _sam3_body(image_path: str, prompts: list[str], grounding: GroundingSettings) -> dict[str, Any]:
    return sam3_request(
        vision_image(image_path).base64,
        prompts,
        min_confidence=grounding.sam3_min_confidence,
        mask_threshold=grounding.sam3_mask_threshold,
    )


def _sam3_detections(
    images: pd.DataFrame,
    objects: dict[str, list[dict] | None],
    model: ModelSettings,
    grounding: GroundingSettings,
    services: Services,
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``sam3``: one SAM 3 ``/infer`` per image with the described objects' unique prompts; each object
    keeps its prompt's best instance not yet taken (:func:`~vlm_gist_dagster.protocol.grounding.select_sam3`)."""
    paths = dict(zip(images["image_id"], images["path"]))
    per_object = {i: sam3_prompts(objects.get(i) or [], grounding.sam3_prompt) for i in images["image_id"]}
    prompts = {i: [p for p in per_object[i] if p] for i in images["image_id"]}
    durations: dict[str, float] = {}

    async def main() -> dict[str, Any]:
        async with services.vision_client("sam3") as vision:

            async def work(image_id: str) -> Any:
                start = time.perf_counter()
                try:
                    body = _sam3_body(paths[image_id], prompts[image_id], grounding)
                    response = await vision.infer_cached(grounding.sam3_flavor, body)
                    found = parse_sam3_response(response, prompts=prompts[image_id])
                    return select_sam3(found, prompts[image_id], keep_all=grounding.sam3_keep_all)
                finally:
                    durations[image_id] = time.perf_counter() - start

            todo = [
                i for i in images["image_id"] if prompts[i]
            ]  # no prompt, no call (as docs/protocol/pipeline.md §4.2)
            return await _run_images(todo, work, f"detections[{model.name}]", log)

    results = asyncio.run(main())
    det_rows: list[dict] = []
    image_rows: list[dict] = []
    for image_id in images["image_id"]:
        result = results.get(image_id)
        error = _error_text(result) if isinstance(result, BaseException) else None
        rows: list[dict] = []
        if result is not None and error is None:
            found, over = result
            rows = _sam3_rows(image_id, per_object[image_id], objects[image_id] or [], found, over)
        det_rows.extend(rows)
        image_rows.append(
            _image_row(image_id, prompts[image_id], rows, durations.get(image_id, math.nan), error)
        )
    return DETECTIONS.from_rows(det_rows), DETECTION_IMAGES.from_rows(image_rows)


# ---------------------------------------------------------------------------------------------- masks


def run_masks(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    detection_images: pd.DataFrame,
    model: ModelSettings,
    detection: DetectionSettings,
    services: Services,
    *,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per detection: its SAM2 mask (full-image COCO RLE), mask box, track id and the preferred
    box, as pixel xyxy and as FiftyOne's relative xywh (docs/protocol/pipeline.md §4.4–4.5).

    An image whose SAM2 call failed (a bad response, or a server error that recurred on every retry)
    keeps its detections without masks, like detections without a track, with the reason in
    ``segmentation_error``; the other images go on."""
    baseline: BaselineSettings | None = model.baseline if model.kind == "baseline" else None
    grounding = model.grounding if baseline is None else None
    mode = grounding.mode if grounding is not None else "mmgd_sam2"
    if baseline is not None and baseline.model_name == "sam3":
        mode = "sam3"  # sam3_classes: SAM 3's own masks, as in the sam3 grounding mode
    seg = baseline if baseline is not None else detection
    info = images.set_index("image_id")
    prompts = dict(zip(detection_images["image_id"], detection_images["prompts"]))
    by_image = {k: g.sort_values("detection_index") for k, g in detections.groupby("image_id", sort=False)}

    async def main() -> dict[str, Any]:
        if mode == "sam3" and by_image:
            return await _sam3_masks(model, info, prompts, by_image, services, log)
        if not by_image or seg.segmentation_name is None or mode == "vlm_boxes":
            return {}
        async with services.vision_client(seg.segmentation_name) as vision:

            async def work(image_id: str) -> Any:
                group = by_image[image_id]
                b64 = vision_image(info.at[image_id, "path"]).base64
                boxes = group[["x1", "y1", "x2", "y2"]].to_numpy().tolist()
                track_body = sam2_track_request(b64) if seg.segmentation_track else None
                response = await vision.segment_cached(
                    seg.segmentation_flavor, sam2_update_request(b64, boxes), track_body
                )
                updated = parse_sam2_response(response["update"])
                tracked = parse_sam2_response(response["track"]) if response["track"] is not None else None
                return updated, tracked

            return await _run_images(list(by_image), work, f"masks[{model.name}]", log)

    results = asyncio.run(main())
    frames: list[pd.DataFrame] = []
    for image_id, group in by_image.items():
        size = int(info.at[image_id, "width"]), int(info.at[image_id, "height"])
        result = results.get(image_id)
        error = _error_text(result) if isinstance(result, BaseException) else None
        if mode in ("sam3", "vlm_boxes"):
            assembled = _own_masks(
                group, None if (result is None or error) else result, prompts.get(image_id), seg
            )
        else:
            tracks = (None, None) if (result is None or error) else result
            assembled = _assemble_masks(group, tracks, size, prompts.get(image_id), baseline, detection)
        frames.append(_mask_frame(group, assembled, size, error))
    if not frames:
        return MASKS.from_rows([])
    return MASKS.conform(pd.concat(frames, ignore_index=True))


async def _sam3_masks(
    model: ModelSettings,
    info: pd.DataFrame,
    prompts: dict[str, Any],
    by_image: dict[str, pd.DataFrame],
    services: Services,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """``sam3`` (and the ``sam3_classes`` baseline): the masks of the instances the detections stage kept,
    from the same SAM 3 request (the response cache answers it; with the cache bypassed or refreshed, SAM 3
    is asked again)."""
    baseline = model.baseline if model.kind == "baseline" else None
    flavor = baseline.model_flavor if baseline is not None else model.grounding.sam3_flavor
    async with services.vision_client("sam3") as vision:

        async def work(image_id: str) -> Any:
            group = by_image[image_id]
            size = int(info.at[image_id, "width"]), int(info.at[image_id, "height"])
            path = info.at[image_id, "path"]
            if baseline is not None:
                body = sam3_classes_request(
                    vision_image(path).base64, baseline, [str(c) for c in prompts[image_id]]
                )
                found = parse_sam3_response(await vision.infer_cached(flavor, body), image_size=size)
                kept, label = suppress_duplicates(found, baseline.model_nms_iou), "object_name"
            else:
                image_prompts = [str(p) for p in prompts[image_id]]
                body = _sam3_body(path, image_prompts, model.grounding)
                response = await vision.infer_cached(flavor, body)
                found = parse_sam3_response(response, prompts=image_prompts, image_size=size)
                kept, _ = select_sam3(found, image_prompts, keep_all=model.grounding.sam3_keep_all)
                label = "prompt"
            if (
                kept.label.tolist() != group[label].tolist()
                or not (kept.xyxy == group[["x1", "y1", "x2", "y2"]].to_numpy()).all()
            ):
                raise RuntimeError(
                    "SAM 3 answered this image differently from the detections stage (its response cache "
                    "was refreshed or cleared): re-materialise detections and masks together"
                )
            return kept

        return await _run_images(list(by_image), work, f"masks[{model.name}]", log)


def _own_masks(
    group: pd.DataFrame,
    segmented: Detections | None,
    prompts: Any,
    settings: DetectionSettings | BaselineSettings,
) -> ImageDetections:
    """One image's detections with the grounding model's own masks (``sam3``) or none (``vlm_boxes``, or
    a failed SAM 3 call)."""
    found = segmented if segmented is not None else Detections.from_table(group, label="prompt")
    return ImageDetections(
        prompts=tuple(prompts or ()),
        detections=found,
        is_over_detection=group["is_over_detection"].fillna(False).to_numpy(dtype=bool),
        missing_prompts=(),
        over_detections=(),
        segmentation_use_bbox=settings.segmentation_use_bbox,
    )


def _assemble_masks(
    group: pd.DataFrame,
    tracks: tuple[Any, Any],
    size: tuple[int, int],
    prompts: Any,
    baseline: BaselineSettings | None,
    detection: DetectionSettings,
) -> ImageDetections:
    """The protocol's assembly of one image's detections with its SAM2 tracks (None, None: no masks)."""
    updated, tracked = tracks
    width, height = size
    if baseline is not None:
        return assemble_baseline_detections(
            Detections.from_table(group, label="object_name"),
            image_width=width,
            image_height=height,
            segmentation=tracked if baseline.segmentation_track else updated,
            segmentation_use_bbox=baseline.segmentation_use_bbox,
        )
    return assemble_detections_with_settings(
        list(prompts or []),
        Detections.from_table(group, label="prompt"),
        detection,
        image_width=width,
        image_height=height,
        update_tracks=updated,
        track_tracks=tracked if detection.segmentation_track else None,
    )


def _mask_frame(
    group: pd.DataFrame, assembled: ImageDetections, size: tuple[int, int], error: str | None
) -> pd.DataFrame:
    """One image's ``masks`` rows: its ``detections`` rows plus SAM2's mask, mask box and track id, the
    evaluated box in pixels and as FiftyOne's relative xywh (docs/protocol/pipeline.md §4.4–4.5)."""
    width, height = size
    frame = group.reset_index(drop=True)
    segmented = assembled.detections.table_columns()
    for column in ("mask", *MASK_BOX_COLUMNS, "track_id"):
        frame[column] = segmented[column]
    boxes = assembled.boxes
    relative = assembled.relative_xywh(width, height)
    for k, column in enumerate(("box_x1", "box_y1", "box_x2", "box_y2")):
        frame[column] = boxes[:, k]
    for k, column in enumerate(("x", "y", "w", "h")):
        frame[column] = relative[:, k]
    frame["segmentation_error"] = error
    return frame
