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
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

#: Environment the pipeline reads when the simulator answers (see ``defs.resources.SIMULATOR_ENV``).
SIMULATED_KEY = "sim-local-key"


class UserFixableError(Exception):
    """A problem the user can fix (a missing dataset, a bad settings or model file, a missing key): the
    command line prints its message, without a traceback, and exits non-zero."""


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
    #: Why each failed pair failed (the first failed step and its error), by pair key.
    failure_reasons: dict[str, str] = field(default_factory=dict)
    #: Requested models that could not be run (bad file, unknown key, missing API key, wrong mode), by
    #: model key or file name.
    model_problems: dict[str, str] = field(default_factory=dict)
    #: Datasets that could not be used (missing and not downloadable, unreadable files), by name; their
    #: pairs were not run.
    dataset_problems: dict[str, str] = field(default_factory=dict)
    #: Pairs not run because their dataset could not be used.
    not_run: list[str] = field(default_factory=list)
    #: Table name -> heading naming the data actually used ("COCO, local copy coco_val2017_32: 32 images").
    headings: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when everything requested ran and succeeded."""
        return not (self.failed or self.model_problems or self.dataset_problems or self.not_run)


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
    from .defs.resources import SIMULATOR_ENV
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


def _simulator_controls(files: Sequence[Path] | None, log: Callable[[str], None]) -> dict:
    """Per-model simulator controls from the model files' ``model.simulator`` blocks; a file that cannot
    be read is left out with a warning (its model cannot run anyway, and it must not stop the others)."""
    from .model_registry import models_dir
    from .sim import SimControlsError, controls_from_model_files

    controls: dict = {}
    for path in sorted(files) if files is not None else sorted(models_dir().glob("*.json")):
        try:
            controls.update(controls_from_model_files([path]))
        except (SimControlsError, OSError, ValueError) as exc:
            log(f"warning: simulator: {exc}")
    return controls


def _start_simulator_per_dataset(
    datasets: dict[str, Path], start: Callable[[dict[str, Path]], object], failed: dict[str, str]
):
    """Start the simulator on ``datasets``; when that fails because of a dataset (an unreadable image,
    a bad annotation file), find which by loading each on its own, record it in ``failed`` and start
    on the others. One broken dataset never stops the other's pairs. Port errors pass through."""
    from .sim import SimulatorStartError, load_world

    try:
        return start(datasets)
    except SimulatorStartError:
        raise
    except Exception as exc:  # noqa: BLE001 - any dataset problem; narrowed down below
        first = exc
    usable = {}
    for name, path in datasets.items():
        try:
            load_world({name: path})
            usable[name] = path
        except Exception as exc:  # noqa: BLE001 - reported per dataset
            failed[name] = f"the simulator cannot load it: {exc}"
    if len(usable) == len(datasets):  # not a dataset's fault after all
        raise first
    return start(usable) if usable else None


@contextlib.contextmanager
def simulator(
    datasets: dict[str, Path],
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
    model_files: Sequence[Path] | None = None,
    failed_datasets: dict[str, str] | None = None,
) -> Iterator[object]:
    """Start the simulator on its default ports (any free ports when those are taken) with the model files'
    simulator blocks (``model_files``, default every file of the models folder), and point this process's
    environment at it.

    With ``failed_datasets`` (a dict), a dataset the simulator cannot load is recorded there with the
    reason and left out, and the others are served; without it, the error is raised. Yields None when no
    dataset could be loaded."""
    from .sim import DEFAULT_PORTS, SimulatorStartError, start_simulator

    controls = _simulator_controls(model_files, log)
    failed: dict[str, str] = {} if failed_datasets is None else failed_datasets
    ports = {name: (port if _port_free(port) else 0) for name, port in DEFAULT_PORTS.items()}

    def start(on: dict[str, Path]):
        return start_simulator(on, ports=ports, seed=seed, model_controls=controls)

    try:
        if failed_datasets is None:
            handle = start(datasets)
        else:
            handle = _start_simulator_per_dataset(datasets, start, failed)
    except SimulatorStartError as exc:
        # Another process took a default port between the check and the bind (two runs starting at
        # once): the pipeline is pointed at whatever ports the simulator gets, so any free ones do.
        log(f"simulator: {exc}; starting on free ports instead")
        ports = {name: 0 for name in DEFAULT_PORTS}
        handle = (
            start(datasets)
            if failed_datasets is None
            else _start_simulator_per_dataset(
                {k: v for k, v in datasets.items() if k not in failed}, start, failed
            )
        )
    if handle is None:
        yield None
        return
    log(
        f"simulator: chat {handle.chat_url}, vision "
        + ", ".join(f"{k} {v}" for k, v in handle.vision_urls.items())
    )
    try:
        with patched_environ(simulator_environment(handle)):
            yield handle
    finally:
        handle.stop()


@dataclass
class ModelSelection:
    """What ``select_models`` found: keys to run, their files, models skipped because they are not for
    this mode (real models under the simulator, simulated ones without), and requested models that
    cannot run at all, with the reason."""

    run: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)


def select_models(use_simulator: bool, wanted: Sequence[str] | None) -> ModelSelection:
    """The models of the models folder to run in this mode (all, or the keys in ``wanted``).

    A file that cannot be used (bad name, JSON syntax error, unknown key, wrong type) is a *problem*,
    reported under its key (or file name) with the reason, never a silent skip. So is a model named in
    ``wanted`` that does not exist or is not for this mode. Models of the other mode are skipped when not
    asked for by name. API keys are checked for the whole run by ``preflight.missing_keys``."""
    from .model_registry import discover_models, models_dir
    from .protocol.settings import SettingsError, load_model_settings

    selection = ModelSelection()
    models, registry_problems = discover_models()
    for problem in registry_problems:
        # "<path>: reason": keyed by the file name, as the file has no usable model key.
        head, _, reason = problem.partition(": ")
        selection.problems[Path(head).name] = reason or problem
    known = {m.key for m in models}
    for key in sorted(set(wanted or ()) - known):
        selection.problems[key] = (
            f"no model file for it in {models_dir()} (known: {', '.join(sorted(known)) or 'none'})"
        )
    mode = "the simulator" if use_simulator else "real servers (--no-simulator)"
    for model in models:
        if wanted and model.key not in wanted:
            continue
        try:
            settings = load_model_settings(model.path)
        except SettingsError as exc:
            selection.problems[model.key] = str(exc)
            continue
        if settings.simulated != use_simulator:
            if wanted:
                other = "a simulated model" if settings.simulated else "a real model"
                hint = "run it without --no-simulator" if settings.simulated else "run it with --no-simulator"
                selection.problems[model.key] = f"{other}, not run on {mode}: {hint}"
            else:
                selection.skipped.append(model.key)
            continue
        selection.run.append(model.key)
        selection.files[model.key] = model.path
    return selection


def _error_text(error) -> str:
    """The first line of the innermost cause of a Dagster error (the user code's own exception, not
    Dagster's "Error occurred while executing op" wrapper), without its dotted class name."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    lines = (getattr(error, "message", None) or "failed").strip().splitlines()
    first = lines[0] if lines else "failed"
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+[A-Za-z_]\w*: ", "", first)


def _failure_reason(result) -> str:
    """The first failed step of an in-process run and the first line of its error."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            return f"{event.step_key}: {_error_text(event.step_failure_data.error)}"
    failure = next((e for e in result.all_events if e.is_run_failure), None)
    if failure is not None and failure.message:
        return failure.message.strip().splitlines()[0]
    return "failed (see the run in the UI)"


def datasets_problem_message(problems: dict[str, str], total: int, missing: Sequence[str] = ()) -> str:
    """A few lines naming every dataset that cannot be used and why, and how to fix it: for the
    ``missing`` ones (not on disk, download failed) the variables that point at local copies."""
    from .datasets import env_var_for

    lines = [
        f"{len(problems)} of {total} datasets cannot be used:"
        if len(problems) < total
        else f"No dataset can be used ({', '.join(problems)}):"
    ]
    lines += [f"  {name}: {reason}" for name, reason in problems.items()]
    if missing:
        lines.append(
            "Connect to the internet and run again (each dataset is downloaded once), or use local copies:"
        )
        lines += [f"  export {env_var_for(name)}=/path/to/{name}" for name in missing]
    if set(problems) - set(missing):
        lines.append("Fix the files named above, or point the variables at another copy.")
    return "\n".join(lines)


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

    Problems are isolated: a model file that cannot be used, or a dataset that cannot be loaded, is
    reported in the :class:`RunReport` (``model_problems``, ``dataset_problems``, ``not_run``) while
    everything else runs. :class:`UserFixableError` is raised only when nothing at all can run.
    """
    import dagster as dg

    from .datasets import resolve_dataset_dirs
    from .definitions import build_definitions
    from .defs.partitions import DATASETS, MODEL_PARTITIONS_NAME, pair_key

    started = time.monotonic()
    report = RunReport()
    unknown = sorted(set(datasets or ()) - set(DATASETS))
    if unknown:
        raise UserFixableError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
    datasets = list(datasets or DATASETS)
    selection = select_models(use_simulator, models)
    report.skipped_models, report.model_problems = selection.skipped, selection.problems
    model_keys = selection.run
    if not use_simulator:
        from .preflight import missing_keys

        missing_api_keys = missing_keys(model_keys, datasets)
        if missing_api_keys:
            raise UserFixableError(
                "nothing was run: these API keys are not set (see README, Running real models):\n  "
                + "\n  ".join(missing_api_keys)
            )
    if report.skipped_models:
        mode = "simulator" if use_simulator else "real servers"
        log(
            f"skipping {len(report.skipped_models)} model(s) not meant for the {mode}: {', '.join(report.skipped_models)}"
        )
    if not model_keys:
        if selection.problems:
            raise UserFixableError(
                "No requested model can be run:\n"
                + "\n".join(f"  {key}: {reason}" for key, reason in selection.problems.items())
            )
        raise UserFixableError(
            f"No model to run on the {'simulator' if use_simulator else 'real servers'}: the models folder "
            "has no such model files (see 'Adding a model' in the README)."
        )
    for key, reason in selection.problems.items():
        log(f"error: model {key}: {reason} (the other models run)")
    existing = set(instance.get_dynamic_partitions(MODEL_PARTITIONS_NAME))
    new = [k for k in model_keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(MODEL_PARTITIONS_NAME, new)
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

    def execute(job_name: str, partition_key: str | None, label: str):
        job = defs.resolve_job_def(job_name)
        t0 = time.monotonic()
        result = job.execute_in_process(
            partition_key=partition_key, instance=instance, raise_on_error=False, run_config=run_config
        )
        status = "ok" if result.success else f"FAILED (run {result.run_id})"
        log(f"{label}: {status} in {time.monotonic() - t0:.1f} s")
        return result

    pairs = [str(pair_key(d, m)) for m in model_keys for d in datasets]
    run_datasets, run_settings, run_leaderboard = list(datasets), True, True
    if only_missing:
        from .defs.schedules import pairs_to_refresh

        todo = {key for key, _ in pairs_to_refresh(instance, paths.models_dir())}
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
    nothing_to_do = not (run_datasets or run_settings or pairs or run_leaderboard)
    # Every dataset the pairs need, resolved (downloaded once) before anything runs, so that all
    # missing datasets are reported together.
    needed = [d for d in datasets if d in run_datasets or any(p.startswith(f"{d}|") for p in pairs)]
    needed = needed if not nothing_to_do else []
    roots, problems, not_downloaded = resolve_dataset_dirs(needed, progress=log)
    report.dataset_problems.update(problems)
    if report.dataset_problems:
        message = datasets_problem_message(report.dataset_problems, len(needed), not_downloaded)
        if not roots:
            raise UserFixableError(message)
        log("error: " + message)

    failed_in_sim: dict[str, str] = {}
    context = (
        simulator(
            roots,
            seed=seed,
            log=log,
            model_files=list(selection.files.values()),
            failed_datasets=failed_in_sim,
        )
        if use_simulator and not nothing_to_do
        else contextlib.nullcontext()
    )
    with context:
        # Built here, once the simulator's environment is set: the resources read it when they are made.
        defs = build_definitions()
        for dataset, reason in failed_in_sim.items():
            log(f"error: dataset {dataset}: {reason}")
            report.dataset_problems[dataset] = reason
        if needed and set(needed) <= set(report.dataset_problems):
            raise UserFixableError(
                datasets_problem_message(report.dataset_problems, len(needed), not_downloaded)
            )
        for dataset in run_datasets:
            if dataset in report.dataset_problems:
                continue
            result = execute("datasets_job", dataset, f"dataset {dataset}")
            if not result.success:
                report.dataset_problems[dataset] = f"could not be loaded: {_failure_reason(result)}"
        if run_settings:
            result = execute("settings_job", None, "detection settings")
            if not result.success:  # every pair needs them: nothing can run
                raise UserFixableError(f"The detection settings cannot be used: {_failure_reason(result)}")
        runnable = [key for key in pairs if key.split("|", 1)[0] not in report.dataset_problems]
        report.not_run = [key for key in pairs if key not in runnable]
        if report.not_run:
            log(
                f"not running {len(report.not_run)} pair(s) of unusable datasets: {', '.join(report.not_run)}"
            )
        for i, key in enumerate(runnable, start=1):
            report.pairs.append(key)
            result = execute("benchmark_pair_job", key, f"[{i}/{len(runnable)}] {key}")
            if not result.success:
                report.failed.append(key)
                report.failure_reasons[key] = _failure_reason(result)
        if run_leaderboard:
            execute("leaderboard_job", None, "leaderboard")
    report.leaderboard_dir = paths.data_dir() / "leaderboard"
    for name in ("coco", "vlm_gist", "weighted"):
        path = report.leaderboard_dir / f"{name}.txt"
        if path.is_file():
            report.texts[name] = path.read_text()
    report.headings = _leaderboard_headings(instance)
    report.seconds = time.monotonic() - started
    return report


def _leaderboard_headings(instance) -> dict[str, str]:
    """The headings of the last leaderboard materialisation (table -> heading), {} when there is none."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("leaderboard"))
    materialization = event.asset_materialization if event is not None else None
    value = materialization.metadata.get("headings") if materialization is not None else None
    data = getattr(value, "data", None)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


#: The local instance's configuration, written when ``$DAGSTER_HOME`` has none. Without a file Dagster
#: prints "No dagster instance configuration file ... found" on every command and, on the first one, its
#: telemetry banner; and the UI loads dagster.io/oss-telemetry.js while telemetry is on.
INSTANCE_YAML = """\
# The local Dagster instance of vlm_gist_dagster, written by `make run` / `make dev` (vlm-gist run/dev)
# because there was none. Runs, event logs and schedules are SQLite files in this directory (Dagster's
# defaults). Edit freely: it is never overwritten.
telemetry:
  enabled: false
"""


def ensure_instance_yaml(home: str | os.PathLike[str]) -> Path | None:
    """Write ``dagster.yaml`` (telemetry off) into ``home`` when it has neither ``dagster.yaml`` nor
    ``dagster.yml``; returns the path written, or None when a configuration was already there."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if (home / "dagster.yaml").exists() or (home / "dagster.yml").exists():
        return None
    path = home / "dagster.yaml"
    tmp = path.with_name(".dagster.yaml.tmp")
    tmp.write_text(INSTANCE_YAML)
    os.replace(tmp, path)
    return path


def default_instance():
    """The local instance (``$DAGSTER_HOME``, default ``data/dagster_home``), its ``dagster.yaml``
    written first when missing."""
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME") or str(paths.data_dir() / "dagster_home")
    os.environ["DAGSTER_HOME"] = home
    ensure_instance_yaml(home)
    return dg.DagsterInstance.get()
