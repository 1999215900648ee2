"""Running the whole benchmark from the command line (``vlm-gist run``, ``make run``).

The runs are executed in this process against the local Dagster instance, so the UI (``make dev``) shows
them afterwards with their lineage and metadata. By default the built-in simulator answers (no keys, no
GPU, no internet): it is started on 127.0.0.1, the simulated models are run, and every server the
pipeline talks to (chat, label-matching LLM and embeddings, vision servers) is pointed at it for this
process only. ``--no-simulator`` runs the real models against the configured real servers instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

#: Environment the pipeline reads when the simulator answers (see ``defs.common.SIMULATOR_ENV``).
SIMULATED_KEY = "sim-local-key"


@dataclass
class RunReport:
    pairs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped_models: list[str] = field(default_factory=list)
    leaderboard_dir: Path | None = None
    texts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: Pairs left as they are by ``only_missing`` (metrics present, model settings unchanged).
    up_to_date: list[str] = field(default_factory=list)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def simulator_environment(handle) -> dict[str, str]:
    """Point every service at a running simulator, with placeholder keys: the simulated chat models, every
    named chat endpoint (the label-matching LLM and embeddings on "OpenAI", the validation VLM on
    "OpenRouter", ...), and the vision servers. Nothing leaves the machine while the simulator answers."""
    from .clients.chat import endpoint_env_var
    from .clients.vision import vision_url_env_var
    from .defs.common import SIMULATOR_ENV
    from .protocol.endpoints import ENDPOINTS

    base = handle.chat_base_url
    env = {
        SIMULATOR_ENV: "1",
        endpoint_env_var("VLM-GIST simulator"): base,
        "VLM_GIST_SIM_API_KEY": SIMULATED_KEY,
        "NIMBRO_VISION_API_KEY": SIMULATED_KEY,
    }
    for endpoint in ENDPOINTS.values():
        env[endpoint_env_var(endpoint.name)] = base
        if endpoint.key_env_var:
            env[endpoint.key_env_var] = SIMULATED_KEY
    env.update({vision_url_env_var(family): url for family, url in handle.vision_urls.items()})
    return env


@contextlib.contextmanager
def simulator(
    datasets: dict[str, Path], *, seed: int = 0, log: Callable[[str], None] = print
) -> Iterator[object]:
    """Start the simulator on its default ports (any free ports when those are taken) with the model files'
    simulator blocks, and point this process's environment at it."""
    from .model_registry import models_dir
    from .sim import DEFAULT_PORTS, SimulatorStartError, controls_from_model_files, start_simulator

    ports = {name: (port if _port_free(port) else 0) for name, port in DEFAULT_PORTS.items()}
    files = sorted(models_dir().glob("*.json"))
    controls = controls_from_model_files(files)
    try:
        handle = start_simulator(datasets, ports=ports, seed=seed, model_controls=controls)
    except SimulatorStartError as exc:
        # Another process took a default port between the check and the bind (two runs starting at
        # once): the pipeline is pointed at whatever ports the simulator gets, so any free ones do.
        log(f"simulator: {exc}; starting on free ports instead")
        ports = {name: 0 for name in DEFAULT_PORTS}
        handle = start_simulator(datasets, ports=ports, seed=seed, model_controls=controls)
    log(
        f"simulator: chat {handle.chat_url}, vision "
        + ", ".join(f"{k} {v}" for k, v in handle.vision_urls.items())
    )
    try:
        with patched_environ(simulator_environment(handle)):
            yield handle
    finally:
        handle.stop()


def select_models(use_simulator: bool, wanted: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Model keys to run and keys skipped (real models under the simulator, simulated ones without)."""
    from .model_registry import discover_models, models_dir
    from .protocol.settings import SettingsError, load_model_settings

    models, problems = discover_models()
    for problem in problems:
        print(f"warning: {problem}")
    run, skipped = [], []
    for model in models:
        if wanted and model.key not in wanted:
            continue
        try:
            settings = load_model_settings(model.path)
        except SettingsError as exc:
            print(f"warning: {exc}")
            skipped.append(model.key)
            continue
        (run if settings.simulated == use_simulator else skipped).append(model.key)
    unknown = sorted(set(wanted or ()) - {m.key for m in models})
    if unknown:
        raise SystemExit(f"unknown model(s): {', '.join(unknown)} (no such file in {models_dir()})")
    return run, skipped


def run_benchmark(
    *,
    instance,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    use_simulator: bool = True,
    seed: int = 0,
    only_missing: bool = False,
    log: Callable[[str], None] = print,
) -> RunReport:
    """Run the benchmark into ``instance``: dataset tables, settings, every selected (dataset, model)
    pair, then the leaderboard.

    By default every pair is re-materialised (the response cache makes repeated calls free, and
    changed detection / label-matching settings take effect). ``only_missing`` runs only what the
    nightly schedule would (``defs.schedules.pairs_to_refresh``): pairs without ``metrics`` (a new
    model, a failed pair) and pairs whose model settings file changed since their descriptions; dataset
    tables and settings only when they were never materialised; the leaderboard only when a pair ran or
    it is missing. Adding one model to a large benchmark then costs its own pairs, not a re-run.
    """
    import dagster as dg

    from .datasets import resolve_dataset_dir
    from .definitions import defs
    from .defs.metrics import leaderboard_dir
    from .defs.partitions import DATASETS, model_partitions, pair_key

    started = time.monotonic()
    report = RunReport()
    datasets = list(datasets or DATASETS)
    model_keys, report.skipped_models = select_models(use_simulator, models)
    if not use_simulator:
        from .preflight import missing_keys

        missing = missing_keys(model_keys, datasets)
        if missing:
            raise SystemExit(
                "nothing was run: these API keys are not set (see README, Running real models):\n  "
                + "\n  ".join(missing)
            )
    if report.skipped_models:
        mode = "simulator" if use_simulator else "real servers"
        log(
            f"skipping {len(report.skipped_models)} model(s) not meant for the {mode}: {', '.join(report.skipped_models)}"
        )
    existing = set(instance.get_dynamic_partitions(model_partitions.name))
    new = [k for k in model_keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(model_partitions.name, new)
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

    def execute(job_name: str, partition_key: str | None, label: str) -> bool:
        job = defs.resolve_job_def(job_name)
        t0 = time.monotonic()
        result = job.execute_in_process(
            partition_key=partition_key, instance=instance, raise_on_error=False, run_config=run_config
        )
        status = "ok" if result.success else f"FAILED (run {result.run_id})"
        log(f"{label}: {status} in {time.monotonic() - t0:.1f} s")
        return result.success

    context = (
        simulator({d: resolve_dataset_dir(d, progress=log) for d in datasets}, seed=seed, log=log)
        if use_simulator
        else contextlib.nullcontext()
    )
    pairs = [str(pair_key(d, m)) for m in model_keys for d in datasets]
    run_datasets, run_settings, run_leaderboard = list(datasets), True, True
    if only_missing:
        from .defs.schedules import pairs_to_refresh

        todo = {key for key, _ in pairs_to_refresh(instance)}
        report.up_to_date = [key for key in pairs if key not in todo]
        pairs = [key for key in pairs if key in todo]
        materialized = instance.get_materialized_partitions(dg.AssetKey("dataset_images"))
        run_datasets = [d for d in datasets if d not in materialized]
        run_settings = not instance.has_asset_key(dg.AssetKey("detection_settings"))
        run_leaderboard = bool(pairs) or not instance.has_asset_key(dg.AssetKey("leaderboard"))
        log(
            f"only missing: {len(pairs)} pair(s) to run, {len(report.up_to_date)} up to date"
            + (f": {', '.join(pairs)}" if pairs else "")
        )
    if not (run_datasets or run_settings or pairs or run_leaderboard):
        context = contextlib.nullcontext()  # nothing to do: no simulator either
    with context:
        for dataset in run_datasets:
            if not execute("datasets_job", dataset, f"dataset {dataset}"):
                raise SystemExit(f"dataset {dataset!r} could not be loaded; see the log above")
        if run_settings:
            execute("settings_job", None, "detection settings")
        for i, key in enumerate(pairs, start=1):
            report.pairs.append(key)
            if not execute("benchmark_pair_job", key, f"[{i}/{len(pairs)}] {key}"):
                report.failed.append(key)
        if run_leaderboard:
            execute("leaderboard_job", None, "leaderboard")
    report.leaderboard_dir = leaderboard_dir()
    for name in ("coco", "vlm_gist", "weighted"):
        path = report.leaderboard_dir / f"{name}.txt"
        if path.is_file():
            report.texts[name] = path.read_text()
    report.seconds = time.monotonic() - started
    return report


def default_instance():
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME") or str(paths.data_dir() / "dagster_home")
    os.environ["DAGSTER_HOME"] = home
    os.makedirs(home, exist_ok=True)
    return dg.DagsterInstance.get()
