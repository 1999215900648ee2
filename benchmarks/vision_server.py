"""Throughput of ``vlm-gist vision-serve``: stage B through HTTP against the same models in-process.

    .venv/bin/python benchmarks/vision_server.py [--images 20] [--boxes 20] [--device cpu]
        [--random-size tiny|full] [--dtype auto] [--sam3]

Per image, stage B as the pipeline runs it (spec §4.2–4.4): MM-Grounding-DINO ``large`` with ``--boxes``
prompts and over-detect 1.0 (exactly that many boxes), then SAM 2.1 ``large``: ``/update`` with one box
prompt per detection and ``/infer`` (track) on the same image. With ``--sam3``, also SAM 3 with the same
number of text prompts on each image, keeping the best instance of each prompt (as many masks as SAM2).

* **in-process**: the server's own family objects called directly (``prepare`` → ``compute``; no JSON,
  base64 or PNG): image file bytes → decoded → boxes → masks as boolean tensors.
* **HTTP**: two ``vlm-gist vision-serve`` child processes (one per family, same device and dtype, the
  models built from the same seed), driven by an httpx client in this process that sends the base64 file,
  parses the JSON and decodes every mask PNG; one request in flight (sequential), and pipelined (the
  detector works on image i+1 while SAM2 segments image i: the two servers are separate processes).

Both run on the same images, one after the other (never at once), after two warm-up images.
Weights are random (``--random-weights``): the models' cost is real, their answers are not.
Target (issue 16): HTTP sequential ≥ 0.8 × in-process for MM-GDINO + SAM2 with 20 boxes per image.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import DATASET_DIRS, machine, markdown_table

PROMPTS = [
    "a person", "a red car", "a wooden chair", "a dog", "a laptop", "a bottle", "a cup", "a bicycle",
    "a potted plant", "a bus", "a traffic light", "a handbag", "a clock", "a book", "a bench", "a bird",
    "a cell phone", "a tv", "a couch", "a dining table", "a backpack", "an umbrella", "a truck", "a sink",
]  # fmt: skip


#: the best instance of each prompt (random weights score every query about equally): one mask per prompt
SAM3_PARAMETERS = {"min_confidence": 0.0, "max_detections_per_prompt": 1}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="images timed (COCO val2017 from ../shared)")
    parser.add_argument("--boxes", type=int, default=20, help="prompts = boxes per image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--random-size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--sam3", action="store_true", help="also time SAM 3 with --boxes text prompts")
    parser.add_argument("--warmup", type=int, default=2)
    return parser.parse_args()


def _images(n: int) -> list[bytes]:
    files = sorted((DATASET_DIRS["coco"] / "data").glob("*.jpg"))
    return [files[i % len(files)].read_bytes() for i in range(n)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- in-process ----------------------------------------------------------------------------------------


def _family(name: str, flavor: str, args: argparse.Namespace) -> Any:
    from vlm_gist_dagster.vision_server._runtime import Runtime
    from vlm_gist_dagster.vision_server.serve import family_class

    runtime = Runtime(device=args.device, dtype=args.dtype, random_weights=True, random_size=args.random_size)
    family = family_class(name)(runtime)
    family.load(flavor, {"flavor": flavor})
    return family


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def in_process(images: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    gdino, sam2 = _family("mmgroundingdino", "large", args), _family("sam2_realtime", "large", args)
    prompts = PROMPTS[: args.boxes]

    def stage_b(data: bytes) -> int:
        payload = {
            "images": [_b64(data)],
            "inference_parameters": [{"prompts": prompts, "min_confidence": 0.0, "overdetect_factor": 1.0}],
        }
        jobs = gdino.prepare(payload)
        (detections,) = gdino.compute(jobs)
        image = jobs[0].image
        from vlm_gist_dagster.vision_server.sam2_realtime import _Prompt

        import numpy as np

        boxes = [_Prompt(j, np.asarray(d.box_xyxy, dtype=np.float32).reshape(2, 2), np.asarray([2, 3], dtype=np.int32)) for j, d in enumerate(detections)]
        sam2.update((image, boxes))
        ((ids, masks, _),) = sam2.track([image])
        _sync(args.device)
        return len(ids)

    result = _timed(images, stage_b, args.warmup)
    sam3 = None
    if args.sam3:
        family = _family("sam3", "sam3", args)
        del gdino, sam2

        def sam3_image(data: bytes) -> int:
            payload = {"images": [_b64(data)], "inference_parameters": SAM3_PARAMETERS | {"prompts": prompts}}
            ((found, masks, _),) = family.compute(family.prepare(payload))
            _sync(args.device)
            return len(found)

        sam3 = _timed(images, sam3_image, args.warmup)
    return {"stage_b": result, "sam3": sam3}


def _timed(images: list[bytes], fn: Any, warmup: int) -> float:
    for data in images[:warmup]:
        fn(data)
    start = time.perf_counter()
    for data in images[warmup:]:
        fn(data)
    return (len(images) - warmup) / (time.perf_counter() - start)


# -- HTTP -------------------------------------------------------------------------------------------------


def _serve(family: str, port: int, args: argparse.Namespace, log: Path) -> Any:
    import subprocess

    flavor = {"mmgroundingdino": "large", "sam2_realtime": "large", "sam3": "sam3"}[family]
    command = [
        sys.executable, "-m", "vlm_gist_dagster.cli", "vision-serve", "--family", family, "--flavor", flavor,
        "--random-weights", "--random-size", args.random_size, "--device", args.device, "--dtype", args.dtype,
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait(url: str, client: Any, process: Any) -> None:
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        try:
            if (await client.get(url + "/health")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.3)


def _decode_masks(tracks: list[dict[str, Any]]) -> int:
    import cv2
    import numpy as np

    for track in tracks:
        cv2.imdecode(np.frombuffer(base64.b64decode(track["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
    return len(tracks)


async def http(images: list[bytes], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import httpx

    prompts = PROMPTS[: args.boxes]
    headers = {"Authorization": "Bearer benchmark"}
    ports = {"mmgroundingdino": _free_port(), "sam2_realtime": _free_port()}
    processes = {f: _serve(f, p, args, workdir / f"{f}.log") for f, p in ports.items()}
    urls = {f: f"http://127.0.0.1:{p}" for f, p in ports.items()}
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), headers=headers) as client:
            for family, process in processes.items():
                await _wait(urls[family], client, process)

            async def detect(data: bytes) -> list[dict[str, Any]]:
                body = {
                    "images": [_b64(data)],
                    "inference_parameters": [{"prompts": prompts, "min_confidence": 0.0, "nms_iou": None, "overdetect_factor": 1.0}],
                }
                response = await client.post(urls["mmgroundingdino"] + "/infer", json=body)
                response.raise_for_status()
                return response.json()["artifact"]["detections"][0]

            async def segment(data: bytes, detections: list[dict[str, Any]]) -> int:
                b64 = _b64(data)
                body = {"image": b64, "prompts": [{"object_id": j, "bbox": d["box_xyxy"]} for j, d in enumerate(detections)]}
                response = await client.post(urls["sam2_realtime"] + "/update", json=body)
                response.raise_for_status()
                _decode_masks(response.json()["artifact"]["tracks"][0])
                response = await client.post(urls["sam2_realtime"] + "/infer", json={"images": [b64]})
                response.raise_for_status()
                return _decode_masks(response.json()["artifact"]["tracks"][0])

            for data in images[: args.warmup]:
                await segment(data, await detect(data))
            timed = images[args.warmup :]
            start = time.perf_counter()
            for data in timed:
                await segment(data, await detect(data))
            out["sequential"] = len(timed) / (time.perf_counter() - start)

            # pipelined: the detector answers image i+1 while SAM2 segments image i
            start = time.perf_counter()
            pending = asyncio.create_task(detect(timed[0]))
            for i, data in enumerate(timed):
                detections = await pending
                if i + 1 < len(timed):
                    pending = asyncio.create_task(detect(timed[i + 1]))
                await segment(data, detections)
            out["pipelined"] = len(timed) / (time.perf_counter() - start)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=60)
    if args.sam3:
        port = _free_port()
        process = _serve("sam3", port, args, workdir / "sam3.log")
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), headers=headers) as client:
                await _wait(url, client, process)

                async def sam3(data: bytes) -> None:
                    body = {"images": [_b64(data)], "inference_parameters": SAM3_PARAMETERS | {"prompts": prompts}}
                    response = await client.post(url + "/infer", json=body)
                    response.raise_for_status()
                    for d in response.json()["artifact"]["detections"][0]:
                        if d["mask"] is not None:
                            _decode_masks([d])

                for data in images[: args.warmup]:
                    await sam3(data)
                start = time.perf_counter()
                for data in images[args.warmup :]:
                    await sam3(data)
                out["sam3"] = (len(images) - args.warmup) / (time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return out


def main() -> None:
    import tempfile

    args = _args()
    images = _images(args.images + args.warmup)
    import torch

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"Machine: {machine()}; device {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{args.images} COCO val2017 images, {args.boxes} boxes per image, {args.random_size} architectures, random weights\n")
    local = in_process(images, args)
    with tempfile.TemporaryDirectory(prefix="vision_bench_") as tmp:
        remote = asyncio.run(http(images, args, Path(tmp)))
    rows = [
        ["MM-GDINO-L + SAM 2.1-L (update + track)", f"{local['stage_b']:.2f}", f"{remote['sequential']:.2f}",
         f"{remote['sequential'] / local['stage_b']:.2f}", f"{remote['pipelined']:.2f}", f"{remote['pipelined'] / local['stage_b']:.2f}"],
    ]  # fmt: skip
    if args.sam3:
        rows.append(["SAM 3, all prompts of an image in one batch", f"{local['sam3']:.2f}", f"{remote['sam3']:.2f}",
                     f"{remote['sam3'] / local['sam3']:.2f}", "", ""])  # fmt: skip
    header = ["images/s", "in-process", "HTTP, 1 in flight", "ratio", "HTTP, pipelined", "ratio"]
    print(markdown_table(header, rows))
    print(json.dumps({"args": vars(args), "in_process": local, "http": remote}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
