"""``vlm-gist``: the project's command line.

``vlm-gist run`` runs the main job into the local Dagster instance (``$DAGSTER_HOME``, default
``data/dagster_home``), so that ``dagster dev`` shows the runs, lineage and metadata afterwards.

Problems a user can fix (a missing dataset, a bad settings or model file, a missing API key) are printed
as one message and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import paths

#: Exit status for a problem the user can fix (bad input, missing dataset or key).
EXIT_USER_ERROR = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe bad input rather than a bug: printed as their message."""
    from .clients.errors import ConfigurationError
    from .datasets import DatasetDownloadError, DatasetError
    from .model_registry import ModelRegistryError
    from .protocol.settings import SettingsError
    from .runner import UserFixableError
    from .sim import SimControlsError, SimulatorStartError

    return (
        UserFixableError,
        DatasetError,
        DatasetDownloadError,
        SettingsError,
        ModelRegistryError,
        ConfigurationError,
        SimControlsError,
        SimulatorStartError,
    )


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
        print(f"\n{report.headings.get(name, name)}\n{text}")
    print(
        f"\n{len(report.pairs) - len(report.failed)}/{len(report.pairs)} (dataset, model) pairs done in {report.seconds:.0f} s"
        + (f" ({len(report.up_to_date)} already up to date)" if report.up_to_date else "")
    )
    print(
        f"Leaderboard:      {report.leaderboard_dir}  (coco.txt, vlm_gist.txt, weighted.txt, leaderboard.md, plots)"
    )
    print(f"Parquet assets:   {paths.assets_dir()}")
    print(f"Dagster instance: {os.environ['DAGSTER_HOME']}  (open the UI with `make dev`)")
    if report.ok:
        return 0
    lines = ["Not everything requested ran:"]
    lines += [f"  model {key}: {reason}" for key, reason in report.model_problems.items()]
    for dataset, reason in report.dataset_problems.items():
        pairs = [p for p in report.not_run if p.startswith(f"{dataset}|")]
        lines.append(f"  dataset {dataset}: {reason}" + (f" ({len(pairs)} pair(s) not run)" if pairs else ""))
    lines += [
        f"  pair {key}: {report.failure_reasons.get(key, 'failed')} (its run is in the UI)"
        for key in report.failed
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 1


def _wait_for_dev_server(command: list[str], *, grace_s: float = 30.0, log=print) -> int:
    """Run ``dg dev`` until it exits or this process gets SIGINT / SIGTERM, then stop it and everything
    it started, within seconds.

    The child gets a session of its own, so a terminal's Ctrl-C (SIGINT to the foreground process
    group) reaches only this process, which then sends exactly one SIGINT to ``dg dev``: a second
    one, arriving while it stops its webserver, daemon and code servers, would abort that and leave
    them running. A second signal here, or a child still running after ``grace_s``, kills the child's
    whole process group; so does anything of the group left behind after the child exited.
    """
    import signal
    import subprocess
    import time

    received: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: received.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        child = subprocess.Popen(command, start_new_session=True)
        try:
            while child.poll() is None and not received:
                time.sleep(0.2)
            if not received:
                return child.returncode
            log("vlm-gist dev: stopping the Dagster services", flush=True)
            child.send_signal(signal.SIGINT)
            deadline = time.monotonic() + grace_s
            while child.poll() is None and len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            if child.poll() is None:
                log("vlm-gist dev: the Dagster services did not stop; killing them", flush=True)
        finally:
            if _group_alive(child.pid):
                _kill_group(child.pid)
            child.wait()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill_group(pgid: int) -> None:
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def dev(args: argparse.Namespace) -> int:
    """`dg dev` on the local instance, with the simulator running and the pipeline pointed at it."""
    from .runner import datasets_problem_message, ensure_instance_yaml, simulator

    home = os.environ.get("DAGSTER_HOME") or str(paths.data_dir() / "dagster_home")
    os.environ["DAGSTER_HOME"] = home
    ensure_instance_yaml(home)
    # `dg dev` runs Dagster's dev server without `dagster dev`'s SupersessionWarning ("use dg dev").
    command = [
        str(Path(sys.executable).with_name("dg")),
        "dev",
        "-w",
        str(paths.project_dir() / "workspace.yaml"),
        *(["--port", str(args.port)] if args.port else []),
        *(["--host", args.host] if args.host else []),
    ]
    if args.no_simulator:
        return _wait_for_dev_server(command)
    roots, problems, missing = _resolve_datasets()
    if problems:
        message = datasets_problem_message(problems, len(roots) + len(problems), missing)
        if not roots:
            from .runner import UserFixableError

            raise UserFixableError(message)
        print(f"warning: {message}", file=sys.stderr)
    failed: dict[str, str] = {}
    with simulator(roots, failed_datasets=failed) as handle:
        for name, reason in failed.items():
            print(f"warning: dataset {name}: {reason}; the simulator serves the others", file=sys.stderr)
        if handle is None:
            from .runner import UserFixableError

            raise UserFixableError("the simulator could load no dataset:\n" + "\n".join(failed.values()))
        return _wait_for_dev_server(command)


def _resolve_datasets() -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """Every benchmark dataset's directory (downloaded once when missing), the problems of those that
    cannot be used, and which of those are missing (rather than broken)."""
    from .datasets import resolve_dataset_dirs
    from .defs.partitions import DATASETS

    return resolve_dataset_dirs(DATASETS, progress=print)


def sim(args: argparse.Namespace) -> int:
    """Start the offline simulator for the configured datasets and block until Ctrl-C / SIGTERM."""
    import signal
    import threading

    from .datasets import load_datasets_settings, resolve_dataset_dir
    from .sim import DEFAULT_PORTS, SERVER_NAMES, controls_from_model_files, start_simulator

    names = args.datasets or list(load_datasets_settings().datasets)
    datasets = {
        name: resolve_dataset_dir(name, download=not args.no_download, progress=print) for name in names
    }
    ports = dict(DEFAULT_PORTS)
    for item in args.port or []:
        server, _, value = item.partition("=")
        if server not in SERVER_NAMES or not value.isdigit():
            print(
                f"--port expects SERVER=PORT with SERVER in {list(SERVER_NAMES)}, got {item!r}",
                file=sys.stderr,
            )
            return EXIT_USER_ERROR
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


def vision_serve(args: argparse.Namespace) -> int:
    """Serve one model family over the NimbRo vision API with transformers (extra 'vision')."""
    from .vision_server.serve import run as serve

    return serve(args)


def review(args: argparse.Namespace) -> int:
    """Build or update the FiftyOne review dataset of one benchmark dataset, then serve the App."""
    from .review import ReviewError, build_review_dataset, dataset_input, model_inputs
    from .review.app import app_url, serve

    try:
        summary = build_review_dataset(
            args.dataset,
            dataset_input(args.dataset),
            model_inputs(args.dataset, args.models or None),
            selected=args.models or None,
            name=args.name,
        )
    except ReviewError as exc:
        print(f"vlm-gist review: {exc}", file=sys.stderr)
        return 2
    print(
        f"\nFiftyOne dataset {summary.name!r}: {summary.num_samples} images, "
        f"{summary.num_ground_truth} ground-truth objects, {len(summary.models)} model(s)"
    )
    disagree = False
    for m in summary.models:
        e = m.evaluation
        line = f"  {m.key:<28} {m.status:<9}"
        if e:
            line += f" TP {e['tp']:>5}  FP {e['fp']:>5}  FN {e['fn']:>5}  P {e['precision']:.3f}  R {e['recall']:.3f}"
        differences = m.differences()
        if differences:
            disagree = True
            line += "  DIFFERS from metrics: " + "; ".join(differences)
        elif e and m.metrics:
            line += "  (= metrics)"
        print(line)
    if disagree:
        print(
            "warning: FiftyOne's evaluation differs from the stored metrics (stale metrics?)", file=sys.stderr
        )
    if args.no_launch:
        print(
            f"Open it with `vlm-gist review --dataset {args.dataset}` (serves {app_url(summary.name, args.port)})"
        )
        return 0
    return serve(summary.name, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-gist", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line messages for input errors"
    )
    # Accepted after the subcommand too (`vlm-gist run --debug`); SUPPRESS keeps a global --debug.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser(
        "run", parents=[common], help="run the whole benchmark into the local Dagster instance"
    )
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
        "dev", parents=[common], help="open the Dagster UI on the local instance, with the simulator running"
    )
    p_dev.add_argument("--no-simulator", action="store_true", help="do not start the simulator")
    p_dev.add_argument("--port", type=int, help="port of the Dagster UI (default 3000)")
    p_dev.add_argument("--host", help="host of the Dagster UI (default 127.0.0.1)")
    p_dev.set_defaults(func=dev)
    p_sim = sub.add_parser(
        "sim", parents=[common], help="serve the offline simulator (chat + vision servers) on 127.0.0.1"
    )
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
    from .vision_server.serve import add_arguments as add_vision_serve_arguments

    p_vision = sub.add_parser(
        "vision-serve",
        help="serve one vision model family (MM-Grounding-DINO, SAM2, SAM 3, Florence-2, Kosmos-2) over the "
        "NimbRo vision API with Hugging Face transformers (needs the 'vision' extra)",
    )
    add_vision_serve_arguments(p_vision)
    p_vision.set_defaults(func=vision_serve)
    p_review = sub.add_parser(
        "review",
        help="review one dataset's results in the FiftyOne App (ground truth, every stage per model, "
        "FiftyOne's evaluation)",
    )
    p_review.add_argument("--dataset", required=True, help="benchmark dataset (vlm_gist, coco)")
    p_review.add_argument("--models", nargs="*", help="models to add or update (default: every stored one)")
    p_review.add_argument("--port", type=int, default=5151, help="App port on 127.0.0.1 (default 5151)")
    p_review.add_argument("--name", help="FiftyOne dataset name (default vlm-gist-<dataset>)")
    p_review.add_argument("--no-launch", action="store_true", help="only build the FiftyOne dataset")
    p_review.set_defaults(func=review)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"vlm-gist {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or not isinstance(exc, _user_errors()):
            raise
        print(f"vlm-gist {args.command}: {exc}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
