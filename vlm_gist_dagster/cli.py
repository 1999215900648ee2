"""``vlm-gist``: the project's command line.

``vlm-gist run`` runs the main job into the local Dagster instance (``$DAGSTER_HOME``, default
``data/dagster_home``), so that ``dagster dev`` shows the runs, lineage and metadata afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import paths


def run(args: argparse.Namespace) -> int:
    from .runner import default_instance, run_benchmark

    if args.models_dir:
        # Read by everything that looks for model files (runner, resources, sensors) in this process.
        os.environ["VLM_GIST_MODELS_DIR"] = str(Path(args.models_dir).expanduser().resolve())
    instance = default_instance()
    report = run_benchmark(
        instance=instance,
        datasets=args.datasets,
        models=args.models,
        use_simulator=not args.no_simulator,
        seed=args.seed,
        only_missing=args.only_missing,
    )
    for name, text in report.texts.items():
        print(f"\n{name}\n{text}")
    print(
        f"\n{len(report.pairs) - len(report.failed)}/{len(report.pairs)} (dataset, model) pairs done in {report.seconds:.0f} s"
        + (f" ({len(report.up_to_date)} already up to date)" if report.up_to_date else "")
    )
    if report.failed:
        print(f"failed: {', '.join(report.failed)} (see their runs in the UI)", file=sys.stderr)
    print(
        f"Leaderboard:      {report.leaderboard_dir}  (coco.txt, vlm_gist.txt, weighted.txt, leaderboard.md, plots)"
    )
    print(f"Parquet assets:   {paths.assets_dir()}")
    print(f"Dagster instance: {os.environ['DAGSTER_HOME']}  (open the UI with `make dev`)")
    return 1 if report.failed else 0


def dev(args: argparse.Namespace) -> int:
    """`dagster dev` on the local instance, with the simulator running and the pipeline pointed at it."""
    import subprocess

    from .datasets import resolve_dataset_dir
    from .defs.partitions import DATASETS
    from .runner import default_instance, simulator

    default_instance()
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(paths.project_dir() / "workspace.yaml"),
    ]
    if args.no_simulator:
        return subprocess.call(command)
    with simulator({d: resolve_dataset_dir(d, progress=print) for d in DATASETS}):
        return subprocess.call(command)


def sim(args: argparse.Namespace) -> int:
    """Start the offline simulator for the configured datasets and block until Ctrl-C / SIGTERM."""
    import signal
    import threading

    from .datasets import DatasetDownloadError, DatasetError, load_datasets_settings, resolve_dataset_dir
    from .sim import DEFAULT_PORTS, SERVER_NAMES, controls_from_model_files, start_simulator

    try:
        names = args.datasets or list(load_datasets_settings().datasets)
        datasets = {
            name: resolve_dataset_dir(name, download=not args.no_download, progress=print) for name in names
        }
    except (DatasetError, DatasetDownloadError) as exc:
        print(f"vlm-gist sim: {exc}", file=sys.stderr)
        return 2
    ports = dict(DEFAULT_PORTS)
    for item in args.port or []:
        server, _, value = item.partition("=")
        if server not in SERVER_NAMES or not value.isdigit():
            print(
                f"--port expects SERVER=PORT with SERVER in {list(SERVER_NAMES)}, got {item!r}",
                file=sys.stderr,
            )
            return 2
        ports[server] = int(value)
    models_dir = Path(args.models_dir) if args.models_dir else paths.settings_dir() / "models"
    model_controls = (
        controls_from_model_files(sorted(models_dir.glob("*.json"))) if models_dir.is_dir() else {}
    )
    handle = start_simulator(
        datasets,
        ports=ports,
        seed=args.seed,
        model_controls=model_controls,
        chat_api_key=args.chat_api_key,
        vision_token=os.environ.get("NIMBRO_VISION_SERVER_TOKEN") or None,
        embedding_backend=args.embedding_backend,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"VLM-GIST simulator (simulated models, seed {args.seed}) serving {', '.join(names)} on 127.0.0.1:")
    print(f"  chat (OpenAI-compatible)  {handle.chat_url}   (chat/completions, models, embeddings)")
    for family, url in handle.vision_urls.items():
        print(f"  {family:<25} {url}")
    print(
        "Any bearer token is accepted unless --chat-api-key / NIMBRO_VISION_SERVER_TOKEN is set. Ctrl-C stops.",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        print("simulator stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-gist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the whole benchmark into the local Dagster instance")
    p_run.add_argument("--datasets", nargs="*", help="datasets to run (default: all)")
    p_run.add_argument("--models", nargs="*", help="model keys to run (default: all for the chosen mode)")
    p_run.add_argument(
        "--no-simulator", action="store_true", help="run the real models against real servers (keys needed)"
    )
    p_run.add_argument(
        "--models-dir",
        help="model settings folder (default: $VLM_GIST_MODELS_DIR or settings/models; the paper's "
        "models: settings/paper)",
    )
    p_run.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    p_run.add_argument(
        "--only-missing",
        action="store_true",
        help="run only pairs without metrics (new models, failed pairs) or whose model settings file "
        "changed, then the leaderboard; default: re-run every pair (cached calls are free)",
    )
    p_run.set_defaults(func=run)
    p_dev = sub.add_parser(
        "dev", help="open the Dagster UI on the local instance, with the simulator running"
    )
    p_dev.add_argument("--no-simulator", action="store_true", help="do not start the simulator")
    p_dev.set_defaults(func=dev)
    p_sim = sub.add_parser("sim", help="serve the offline simulator (chat + vision servers) on 127.0.0.1")
    p_sim.add_argument(
        "--datasets", nargs="*", help="datasets to serve (default: all in settings/datasets.json)"
    )
    p_sim.add_argument("--seed", type=int, default=0, help="seed of every simulated draw (default 0)")
    p_sim.add_argument(
        "--port", action="append", metavar="SERVER=PORT", help="override a port (0 = any free port)"
    )
    p_sim.add_argument("--models-dir", help="model settings folder whose model.simulator blocks to read")
    p_sim.add_argument("--chat-api-key", help="require this bearer token on the chat server")
    p_sim.add_argument("--embedding-backend", choices=["hashed", "minilm"], default="hashed")
    p_sim.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading a missing dataset"
    )
    p_sim.set_defaults(func=sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
