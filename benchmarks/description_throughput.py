"""Description throughput (stage A) against the simulator with a fixed latency per request.

    .venv/bin/python benchmarks/description_throughput.py [--images 500] [--latency 1.0]
        [--concurrency 1 8 32 64] [--fault-concurrency 32] [--dataset coco]

What is measured: ``clients.describe.describe_images`` — the code the ``descriptions`` asset runs — with a
fresh ``ChatClient(concurrency=N)`` per row, describing ``--images`` images (the dataset's images
repeated under distinct ids) with the shipped ``sim_strong`` request settings (OpenRouter flavour, SSE,
JSON mode, timeouts 15 / 15 / 60 s) sent as model ``bench/throughput``. The simulator (in a child process,
like a remote server, so that it does not share the client's CPU and GIL; ephemeral loopback ports)
answers after ``--latency`` seconds (keep-alive comment first, as OpenRouter
does). The response cache is off: repeated images would otherwise be free.

* images/s against the ideal ``concurrency / latency`` (every slot busy all the time, zero overhead);
* the same at ``--fault-concurrency`` with 10 % HTTP 429 (``Retry-After: 1``) and 5 % stalls (half
  before the first chunk, half mid-stream, 30 s long, so the client's 15 s chunk timeouts fire and the
  paper's content retry re-sends the image): wall time, slowdown against the fault-free row, and what
  happened (429s retried, stalls, failed attempts, images that failed). Faults are drawn per request
  (seed 0), so a retried request gets a fresh draw.

Prints Markdown tables and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass

from _common import DATASET_DIRS, SIM_MODEL_FILES, SimulatorProcess, machine, markdown_table, peak_rss_mib

MODEL_NAME = "bench/throughput"
ENDPOINT = "VLM-GIST simulator"
KEY_ENV = "VLM_GIST_SIM_API_KEY"


@dataclass
class Row:
    concurrency: int
    images: int
    seconds: float
    succeeded: int
    requests: int
    statuses: Counter
    faults: Counter
    failed_attempts: int
    http_retries: int
    max_in_flight: int
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def description_settings():
    """The shipped ``sim_strong`` description settings, answering as :data:`MODEL_NAME`."""
    from vlm_gist_dagster.protocol.settings import load_model_settings

    settings = load_model_settings(SIM_MODEL_FILES["strong"]).description
    block = settings.vlm_structured_description.model_copy(update={"model_name": MODEL_NAME})
    return settings.model_copy(update={"vlm_structured_description": block})


def run_once(sim, settings, inputs, concurrency: int) -> Row:
    from vlm_gist_dagster.clients.chat import ChatClient
    from vlm_gist_dagster.clients.describe import describe_images

    sim.clear_log()
    sim.reset_counters()

    async def main():
        async with ChatClient(
            endpoint_urls={ENDPOINT: sim.chat_base_url},
            env={KEY_ENV: "benchmark-key"},
            concurrency=concurrency,
            cache=None,  # no response cache: repeated images must really be sent
        ) as chat:
            start, cpu = time.perf_counter(), time.process_time()
            results = await describe_images(chat, settings, inputs)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            return results, elapsed, cpu, chat.limits(ENDPOINT).max_in_flight

    results, elapsed, cpu, max_in_flight = asyncio.run(main())
    records = [r for r in sim.request_log() if r.path == "/v1/chat/completions"]
    return Row(
        concurrency=concurrency,
        images=len(inputs),
        seconds=elapsed,
        succeeded=sum(r.success for r in results),
        requests=len(records),
        statuses=Counter(r.status for r in records),
        faults=Counter(r.fault for r in records if r.fault),
        failed_attempts=sum(r.failed_attempts_total for r in results),
        http_retries=sum(r.http_retries for r in results),
        max_in_flight=max_in_flight,
        client_cpu_s=cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before the first chunk")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--fault-concurrency", type=int, nargs="*", default=[32])
    parser.add_argument("--dataset", choices=sorted(DATASET_DIRS), default="coco")
    args = parser.parse_args()

    from vlm_gist_dagster.datasets import load_dataset
    from vlm_gist_dagster.sim import SIM_MODEL_PRESETS, FaultControls

    dataset = load_dataset(DATASET_DIRS[args.dataset])
    # Images without ground truth are left out: the simulated model has nothing to describe there, and
    # the paper's rule (an empty list is a failed attempt) would spend four sequential requests on each.
    with_gt = set(dataset.ground_truth["image_id"])
    paths = [p for i, p in zip(dataset.images["image_id"], dataset.images["path"]) if i in with_gt]
    skipped = len(dataset.images) - len(paths)
    inputs = [(f"img{i:05d}", paths[i % len(paths)]) for i in range(args.images)]
    # recall 1, no hallucinations: every answer lists the image's objects, so without faults each image
    # costs exactly one request and the ideal rate is concurrency / latency.
    quiet = SIM_MODEL_PRESETS["sim/strong"].updated(
        recall=1.0,
        hallucinations=0.0,
        latency_mean_s=args.latency,
        latency_jitter_s=0.0,
        faults=FaultControls().model_dump(),
    )
    faulty = {
        "rate_limit": 0.10,
        "stall_first_chunk": 0.025,
        "stall_mid_stream": 0.025,
        "retry_after_s": 1,
        "stall_seconds": 30.0,
    }
    settings = description_settings()
    sim = SimulatorProcess(
        {args.dataset: DATASET_DIRS[args.dataset]}, servers=["chat"], model_controls={MODEL_NAME: quiet}
    )
    rows: list[Row] = []
    fault_rows: list[tuple[Row, Row]] = []
    try:
        clean: dict[int, Row] = {}
        for c in args.concurrency:
            clean[c] = run_once(sim, settings, inputs, c)
            rows.append(clean[c])
            print(f"done: concurrency {c}: {clean[c].seconds:.1f} s", file=sys.stderr, flush=True)
        for c in args.fault_concurrency:
            if c not in clean:
                clean[c] = run_once(sim, settings, inputs, c)
            sim.set_controls("chat", model=MODEL_NAME, faults=faulty)
            fault_rows.append((clean[c], run_once(sim, settings, inputs, c)))
            sim.set_controls("chat", model=MODEL_NAME, faults=FaultControls().model_dump())
            print(f"done: concurrency {c} with faults", file=sys.stderr, flush=True)
    finally:
        sim.stop()

    n, lat = args.images, args.latency
    print(f"### Description throughput: {n} images, {lat:g} s latency per request, no faults\n")
    print(
        markdown_table(
            [
                "in flight",
                "wall time",
                "images/s",
                "ideal (concurrency / latency)",
                "of ideal",
                "succeeded",
                "requests",
                "max in flight seen",
                "client CPU per request",
            ],
            [
                (
                    r.concurrency,
                    f"{r.seconds:.1f} s",
                    f"{r.rate:.2f}",
                    f"{r.concurrency / lat:.2f}",
                    f"{100 * r.rate / (r.concurrency / lat):.1f} %",
                    f"{r.succeeded}/{r.images}",
                    r.requests,
                    r.max_in_flight,
                    f"{1000 * r.client_cpu_s / r.requests:.1f} ms",
                )
                for r in rows
            ],
        )
    )
    if fault_rows:
        print(
            "\n### With 10 % HTTP 429 (Retry-After 1 s) and 5 % stalls (30 s; client chunk timeouts 15 s)\n"
        )
        print(
            markdown_table(
                [
                    "in flight",
                    "wall time (no faults)",
                    "wall time (faults)",
                    "slowdown",
                    "images/s",
                    "requests",
                    "429s retried",
                    "stalls → timeout",
                    "failed attempts (Ret.)",
                    "images failed",
                ],
                [
                    (
                        f.concurrency,
                        f"{c.seconds:.1f} s",
                        f"{f.seconds:.1f} s",
                        f"{f.seconds / c.seconds:.2f}x",
                        f"{f.rate:.2f}",
                        f.requests,
                        f.faults.get("rate_limit", 0),
                        f.faults.get("stall_first_chunk", 0) + f.faults.get("stall_mid_stream", 0),
                        f.failed_attempts,
                        f.images - f.succeeded,
                    )
                    for c, f in fault_rows
                ],
            )
        )
    print(
        f"\n- Images: the {len(paths)} {args.dataset} images with ground truth ({skipped} without left out) repeated "
        f"under distinct ids, sent as their original bytes; model settings: sim_strong (SSE, JSON mode), simulated "
        f"with recall 1 and no hallucinations; the simulator runs in its own process, like a remote server "
        f"(peak RSS: client {peak_rss_mib():.0f} MiB, simulator {sim.peak_rss_mib or 0:.0f} MiB); "
        f"ideal = every slot busy all the time with zero overhead."
    )
    print(f"- Machine: {machine()}.")


if __name__ == "__main__":
    main()
