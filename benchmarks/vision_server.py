"""Throughput of ``vlm-gist vision-serve``: stage B through HTTP against the same models in-process.

    .venv/bin/python benchmarks/vision_server.py [--images 20] [--boxes 20] [--device cpu]
        [--random-size tiny|full] [--dtype auto] [--sam3]

Per image, stage B as the pipeline runs it (docs/protocol/pipeline.md §4.2–4.4): MM-Grounding-DINO ``large`` with ``--boxes``
prompts and over-detect 1.0 (exactly that many boxes), then SAM 2.1 ``large``: ``/update`` with one box
prompt per detection and ``/infer`` (track) on the same image. With ``--sam3``, also SAM 3 with the same
number of text prompts on each image, keeping the best instance of each prompt (as many masks as SAM2).

* **in-process**: the server's own family objects called directly (``prepare`` → ``compute``; no JSON,
  base64 or PNG): image file bytes → decoded → boxes → masks as boolean tensors.
* **HTTP**: two ``vlm-gist vision-serve`` child processes (one per family, same device and dtype, the
  models built from the same seed), driven by an httpx client in this process that sends the base64 file,
  parses the JSON and decodes every mask PNG; one request in flight (sequential), and pipelined (the
  detector works on image i+1 while SAM2 segments image i: the two servers are separate processes).

Both run on the same images after two warm-up images, interleaved image by image (in-process, then
HTTP, never at once) so that both see the same load on a shared machine; CPU seconds per image are
reported too (HTTP: this client plus the servers). ``--threads`` sets torch's CPU threads of both: on a
loaded 2-core machine, 2 OpenMP threads per process spin-wait for descheduled siblings and multiply
the CPU time several-fold (seen here), so the CPU numbers in the README use 1.
Weights are random (``--random-weights``): the models' cost is real, their answers are not.
Target (issue 16): HTTP sequential ≥ 0.8 × in-process for MM-GDINO + SAM2 with 20 boxes per image.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
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
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of this process and of each server (OMP_NUM_THREADS); default torch's",
    )
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


class InProcess:
    """Stage B (and SAM 3) on the server's family objects, called directly."""

    def __init__(self, args: argparse.Namespace, families: tuple[str, ...]) -> None:
        self.args = args
        self.prompts = PROMPTS[: args.boxes]
        self.families = {f: _family(f, FLAVOR[f], args) for f in families}

    def stage_b(self, data: bytes) -> int:
        import numpy as np

        from vlm_gist_dagster.vision_server.sam2_realtime import _Prompt

        gdino, sam2 = self.families["mmgroundingdino"], self.families["sam2_realtime"]
        payload = {
            "images": [_b64(data)],
            "inference_parameters": [
                {"prompts": self.prompts, "min_confidence": 0.0, "overdetect_factor": 1.0}
            ],
        }
        jobs = gdino.prepare(payload)
        (detections,) = gdino.compute(jobs)
        image = jobs[0].image
        corners = np.asarray([2, 3], dtype=np.int32)
        prompts = [
            _Prompt(j, np.asarray(d.box_xyxy, dtype=np.float32).reshape(2, 2), corners)
            for j, d in enumerate(detections)
        ]
        sam2.update((image, prompts))
        ((ids, _masks, _),) = sam2.track([image])
        _sync(self.args.device)
        return len(ids)

    def sam3(self, data: bytes) -> int:
        family = self.families["sam3"]
        payload = {
            "images": [_b64(data)],
            "inference_parameters": SAM3_PARAMETERS | {"prompts": self.prompts},
        }
        ((found, _masks, _),) = family.compute(family.prepare(payload))
        _sync(self.args.device)
        return len(found)


# -- HTTP -------------------------------------------------------------------------------------------------

FLAVOR = {"mmgroundingdino": "large", "sam2_realtime": "large", "sam3": "sam3"}


def _serve(family: str, port: int, args: argparse.Namespace, log: Path) -> Any:
    import subprocess

    command = [
        sys.executable, "-m", "vlm_gist_dagster.cli", "vision-serve", "--family", family, "--flavor", FLAVOR[family],
        "--random-weights", "--random-size", args.random_size, "--device", args.device, "--dtype", args.dtype,
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode_masks(entries: list[dict[str, Any]]) -> int:
    import cv2
    import numpy as np

    for entry in entries:
        if entry.get("mask") is not None:
            cv2.imdecode(np.frombuffer(base64.b64decode(entry["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
    return len(entries)


class OverHTTP:
    """The same work through ``vlm-gist vision-serve`` child processes (one per family)."""

    def __init__(self, args: argparse.Namespace, families: tuple[str, ...], workdir: Path) -> None:
        import httpx

        self.prompts = PROMPTS[: args.boxes]
        ports = {f: _free_port() for f in families}
        self.processes = {f: _serve(f, p, args, workdir / f"{f}.log") for f, p in ports.items()}
        self.urls = {f: f"http://127.0.0.1:{p}" for f, p in ports.items()}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(1800.0), headers={"Authorization": "Bearer benchmark"}
        )

    async def start(self) -> None:
        for family, process in self.processes.items():
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"vision-serve {family} exited with {process.returncode}")
                try:
                    if (await self.client.get(self.urls[family] + "/health")).status_code == 200:
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                await asyncio.sleep(0.3)

    async def close(self) -> None:
        await self.client.aclose()
        for process in self.processes.values():
            process.terminate()
            process.wait(timeout=120)

    def server_cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for process in self.processes.values():
            times = psutil.Process(process.pid).cpu_times()
            total += times.user + times.system
        return total

    async def _post(self, family: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(self.urls[family] + path, json=body)
        response.raise_for_status()
        return response.json()["artifact"]

    async def detect(self, data: bytes) -> list[dict[str, Any]]:
        parameters = {
            "prompts": self.prompts,
            "min_confidence": 0.0,
            "nms_iou": None,
            "overdetect_factor": 1.0,
        }
        body = {"images": [_b64(data)], "inference_parameters": [parameters]}
        return (await self._post("mmgroundingdino", "/infer", body))["detections"][0]

    async def segment(self, data: bytes, detections: list[dict[str, Any]]) -> int:
        b64 = _b64(data)
        prompts = [{"object_id": j, "bbox": d["box_xyxy"]} for j, d in enumerate(detections)]
        _decode_masks(
            (await self._post("sam2_realtime", "/update", {"image": b64, "prompts": prompts}))["tracks"][0]
        )
        return _decode_masks((await self._post("sam2_realtime", "/infer", {"images": [b64]}))["tracks"][0])

    async def stage_b(self, data: bytes) -> int:
        return await self.segment(data, await self.detect(data))

    async def sam3(self, data: bytes) -> int:
        body = {"images": [_b64(data)], "inference_parameters": SAM3_PARAMETERS | {"prompts": self.prompts}}
        return _decode_masks((await self._post("sam3", "/infer", body))["detections"][0])

    async def pipelined(self, images: list[bytes]) -> float:
        """images/s with the detector answering image i+1 while SAM2 segments image i."""
        start = time.perf_counter()
        pending = asyncio.create_task(self.detect(images[0]))
        for i, data in enumerate(images):
            detections = await pending
            if i + 1 < len(images):
                pending = asyncio.create_task(self.detect(images[i + 1]))
            await self.segment(data, detections)
        return len(images) / (time.perf_counter() - start)


def _cpu_self() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def compare(
    images: list[bytes], args: argparse.Namespace, families: tuple[str, ...], task: str
) -> dict[str, float]:
    """Interleaved, image by image (in-process, then HTTP), so that both see the same load on a shared
    machine: wall-clock images/s of each, and CPU seconds per image (HTTP: client + servers)."""
    import tempfile

    local = InProcess(args, families)
    with tempfile.TemporaryDirectory(prefix="vision_bench_") as tmp:
        remote = OverHTTP(args, families, Path(tmp))
        try:
            await remote.start()
            for data in images[: args.warmup]:
                getattr(local, task)(data)
                await getattr(remote, task)(data)
            timed = images[args.warmup :]
            wall = {"in_process": 0.0, "http": 0.0}
            cpu = {"in_process": 0.0, "http": 0.0}
            for data in timed:
                c0, t0 = _cpu_self(), time.perf_counter()
                getattr(local, task)(data)
                c1, t1 = _cpu_self(), time.perf_counter()
                s1 = remote.server_cpu_seconds()
                await getattr(remote, task)(data)
                c2, t2, s2 = _cpu_self(), time.perf_counter(), remote.server_cpu_seconds()
                wall["in_process"] += t1 - t0
                wall["http"] += t2 - t1
                cpu["in_process"] += c1 - c0
                cpu["http"] += (c2 - c1) + (s2 - s1)
            result = {
                "in_process": len(timed) / wall["in_process"],
                "http": len(timed) / wall["http"],
                "cpu_in_process": cpu["in_process"] / len(timed),
                "cpu_http": cpu["http"] / len(timed),
            }
            if task == "stage_b":
                result["http_pipelined"] = await remote.pipelined(timed)
        finally:
            await remote.close()
    return result


def main() -> None:
    args = _args()
    images = _images(args.images + args.warmup)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(
        f"Machine: {machine()}; device {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"{args.images} COCO val2017 images, {args.boxes} boxes per image, {args.random_size} architectures, random weights\n"
    )
    stage_b = asyncio.run(compare(images, args, ("mmgroundingdino", "sam2_realtime"), "stage_b"))
    results = {"stage_b": stage_b}
    rows = [
        ["MM-GDINO large + SAM 2.1 large (update + track)", f"{stage_b['in_process']:.2f}", f"{stage_b['http']:.2f}",
         f"{stage_b['http'] / stage_b['in_process']:.2f}", f"{stage_b['http_pipelined']:.2f}",
         f"{stage_b['cpu_in_process']:.2f} / {stage_b['cpu_http']:.2f}"],
    ]  # fmt: skip
    if args.sam3:
        sam3 = asyncio.run(compare(images, args, ("sam3",), "sam3"))
        results["sam3"] = sam3
        rows.append(["SAM 3 (all prompts of an image in one batch)", f"{sam3['in_process']:.2f}", f"{sam3['http']:.2f}",
                     f"{sam3['http'] / sam3['in_process']:.2f}", "", f"{sam3['cpu_in_process']:.2f} / {sam3['cpu_http']:.2f}"])  # fmt: skip
    header = [
        "images/s",
        "in-process",
        "HTTP",
        "HTTP / in-process",
        "HTTP, pipelined",
        "CPU s per image (in-process / HTTP)",
    ]
    print(markdown_table(header, rows))
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
