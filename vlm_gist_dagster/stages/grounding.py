"""Stage B for one (model, dataset) pair: MM-Grounding-DINO boxes (``run_detections``) and SAM2 masks
(``run_masks``); for baselines, Florence-2 / Kosmos-2 boxes and their SAM2 masks (spec §4, §6).

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
from ..protocol.segmentation import parse_sam2_response, sam2_track_request, sam2_update_request
from ..protocol.settings import BaselineSettings, DetectionSettings, ModelSettings
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
    strings dropped (spec §4.2; the reference rejects empty prompts)."""
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
    (the first with that description, spec §4.4 step 5) and its direct / over-detection flag."""
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
        x1, y1, x2, y2 = box
        rows.append(
            {
                "image_id": image_id,
                "detection_index": j,
                "prompt": label,
                "object_name": instance.get("object_name"),
                "description": instance.get("description"),
                "instance_index": index,
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
                "confidence": confidence,
                "is_over_detection": bool(flags[j]),
            }
        )
    return rows


def _baseline_rows(image_id: str, found: Detections) -> list[dict]:
    """One row per detection of a baseline's image: its label as the object name, no score, no prompt."""
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
            "confidence": math.nan,
            "is_over_detection": None,
        }
        for j, (label, box) in enumerate(zip(found.label.tolist(), found.xyxy.tolist()))
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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(detections, detection_images)``: one row per detector output, one row per image."""
    paths = dict(zip(images["image_id"], images["path"]))
    objects = _objects_by_image(descriptions)
    baseline = model.baseline if model.kind == "baseline" else None
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
                if prompts[image_id]:  # an image without prompts is not sent (spec §4.2)
                    todo.append(image_id)
            results = await _run_images(todo, work, f"detections[{model.name}]", log)
            return results, prompts, durations

    results, prompts, durations = asyncio.run(main())
    det_rows: list[dict] = []
    image_rows: list[dict] = []
    for image_id in images["image_id"]:
        p = prompts.get(image_id, [])
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
                # baselines have no prompts; for the Ins. column every baseline image counts (spec §6)
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
    box, as pixel xyxy and as FiftyOne's relative xywh (spec §4.4–4.5).

    An image whose SAM2 call failed (a bad response, or a server error that recurred on every retry)
    keeps its detections without masks, like detections without a track, with the reason in
    ``segmentation_error``; the other images go on."""
    baseline: BaselineSettings | None = model.baseline if model.kind == "baseline" else None
    seg = baseline if baseline is not None else detection
    info = images.set_index("image_id")
    prompts = dict(zip(detection_images["image_id"], detection_images["prompts"]))
    by_image = {k: g.sort_values("detection_index") for k, g in detections.groupby("image_id", sort=False)}

    async def main() -> dict[str, Any]:
        if not by_image or seg.segmentation_name is None:
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
        tracks = (None, None) if (result is None or error) else result
        assembled = _assemble_masks(group, tracks, size, prompts.get(image_id), baseline, detection)
        frames.append(_mask_frame(group, assembled, size, error))
    if not frames:
        return MASKS.from_rows([])
    return MASKS.conform(pd.concat(frames, ignore_index=True))


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
    evaluated box in pixels and as FiftyOne's relative xywh (spec §4.4–4.5)."""
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
