"""Helpers shared by the benchmark scripts: the machine they ran on, peak memory, generated simulated
model files and temporary environments. Nothing here is committed output: every generated file goes to a
temporary directory the caller removes.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import sys
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The shared reference data (``$VLM_GIST_SHARED_DIR`` or ``../shared``), as the tests find it.
SHARED = Path(os.environ.get("VLM_GIST_SHARED_DIR") or REPO.parent / "shared").resolve()
DATASET_DIRS = {
    "vlm_gist": SHARED / "datasets" / "vlm_gist",
    "coco": SHARED / "datasets" / "coco_val2017_32",
}
SIM_MODEL_FILES = {
    name: REPO / "settings" / "models" / f"sim_{name}.json" for name in ("strong", "medium", "weak")
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def machine() -> str:
    """One line: architecture, CPU model, cores, RAM, OS, Python, today's date.

    >>> "Python" in machine()
    True
    """
    ram = ram_gib()
    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"{f'{ram:.0f} GiB RAM' if ram else 'RAM unknown'}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {date.today().isoformat()}"
    )


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (Linux reports ``ru_maxrss`` in KiB) of this process
    (``RUSAGE_SELF``) or of its waited-for children (``RUSAGE_CHILDREN``: the largest child)."""
    return resource.getrusage(who).ru_maxrss / 1024


def markdown_table(header: list[str], rows: Iterable[Iterable[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column (``l`` or ``r``, default: first left).

    >>> print(markdown_table(["a", "b"], [[1, 2]]))
    | a | b |
    |:--|--:|
    | 1 | 2 |
    """
    align = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":--" if a == "l" else "--:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Generated simulated models


#: Fault types that cost wall-clock time (stalls, 429 Retry-After waits, 5xx / connection backoff):
#: removed from generated "zero latency" models, so those measure the pipeline and not the waits.
TIMED_FAULTS = (
    "rate_limit",
    "server_error",
    "unavailable",
    "connection_drop",
    "stall_first_chunk",
    "stall_mid_stream",
)


def zero_latency_controls(preset: str) -> dict[str, Any]:
    """The ``model.simulator`` block of a generated model: the quality of the shipped preset
    ``sim/<preset>`` (recall, hallucinations, synonyms, fences, reasoning, content faults) with zero
    latency and none of the :data:`TIMED_FAULTS`."""
    from vlm_gist_dagster.sim import SIM_MODEL_PRESETS

    controls = SIM_MODEL_PRESETS[f"sim/{preset}"].model_dump()
    controls.update(latency_mean_s=0.0, latency_jitter_s=0.0, chunk_interval_s=0.0)
    controls["faults"].update({name: 0.0 for name in TIMED_FAULTS})
    return controls


def write_model_file(
    directory: Path,
    key: str,
    preset: str,
    *,
    model_name: str | None = None,
    simulator: Mapping[str, Any] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<directory>/<key>.json``: a copy of ``settings/models/sim_<preset>.json`` answering as
    ``model_name`` (default ``bench/<key>``) with the given simulator block (default
    :func:`zero_latency_controls`). ``changes`` updates the structured-description request block (e.g.
    shorter timeouts)."""
    raw = json.loads(SIM_MODEL_FILES[preset].read_text())
    raw = copy.deepcopy(raw)
    name = model_name or f"bench/{key}"
    raw["model"]["display_name"] = f"{key} (simulated)"
    raw["model"]["simulator"] = dict(simulator if simulator is not None else zero_latency_controls(preset))
    for block in ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution"):
        if isinstance(raw.get(block), dict):
            raw[block]["model_name"] = name
            raw[block].update(changes or {})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    path.write_text(json.dumps(raw, indent=1))
    return path


def write_models(directory: Path, count: int, start: int = 1) -> list[Path]:
    """``count`` generated zero-latency models ``bench_01 …``, cycling the strong / medium / weak presets."""
    presets = ("strong", "medium", "weak")
    return [
        write_model_file(directory, f"bench_{i:02d}", presets[(i - 1) % 3])
        for i in range(start, start + count)
    ]


def base_environment(tmp: Path, models_dir: Path | None = None) -> dict[str, str]:
    """Environment of a benchmark child process: every store in ``tmp``, the shared datasets, offline."""
    env = dict(os.environ)
    env.update(
        {
            "VLM_GIST_DATA_DIR": str(tmp / "data"),
            "DAGSTER_HOME": str(tmp / "dagster_home"),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "VLM_GIST_DATASET_DIR_VLM_GIST": str(DATASET_DIRS["vlm_gist"]),
            "VLM_GIST_DATASET_DIR_COCO": str(DATASET_DIRS["coco"]),
            "FIFTYONE_DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
        }
    )
    if models_dir is not None:
        env["VLM_GIST_MODELS_DIR"] = str(models_dir)
    (tmp / "dagster_home").mkdir(parents=True, exist_ok=True)
    return env


# --------------------------------------------------------------------------------------------------
# The simulator in its own process


def _serve_simulator(conn, datasets: dict[str, str], kwargs: dict[str, Any]) -> None:
    """Child process: start the simulator, send its URLs, then answer commands until ``stop``."""
    from vlm_gist_dagster.sim import start_simulator

    try:
        handle = start_simulator(datasets, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", repr(exc)))
        return
    conn.send(("ok", {"chat_base_url": handle.chat_base_url, "vision_urls": dict(handle.vision_urls)}))
    while True:
        method, args, kw = conn.recv()
        try:
            if method == "stop":
                handle.stop()
                conn.send(("ok", peak_rss_mib()))
                return
            if method == "request_log":
                result: Any = handle.request_log.snapshot()
            elif method == "clear_log":
                result = handle.request_log.clear()
            else:
                getattr(handle, method)(*args, **kw)
                result = None
            conn.send(("ok", result))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            conn.send(("error", repr(exc)))


class SimulatorProcess:
    """The simulator in a child process, so that it does not share the measured client's CPU and GIL (a
    real server never does). Mirrors the parts of ``SimulatorHandle`` the benchmarks use.

    ``datasets``: name → directory; ``kwargs``: :func:`vlm_gist_dagster.sim.start_simulator` options
    (ports default to ephemeral ones).
    """

    def __init__(self, datasets: Mapping[str, Path | str], **kwargs: Any) -> None:
        import multiprocessing

        from vlm_gist_dagster.sim import SERVER_NAMES

        kwargs.setdefault("ports", {name: 0 for name in SERVER_NAMES})
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_simulator,
            args=(child, {k: str(v) for k, v in datasets.items()}, kwargs),
            daemon=True,
        )
        self._process.start()
        status, value = self._conn.recv()
        if status != "ok":
            self._process.join(5)
            raise RuntimeError(f"the simulator did not start: {value}")
        self.chat_base_url: str = value["chat_base_url"]
        self.vision_urls: dict[str, str] = value["vision_urls"]
        self.peak_rss_mib: float | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._conn.send((method, args, kwargs))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator {method}: {value}")
        return value

    def set_controls(self, server: str = "chat", model: str | None = None, **changes: Any) -> None:
        self._call("set_controls", server, model, **changes)

    def reset_counters(self) -> None:
        self._call("reset_counters")

    def clear_log(self) -> None:
        self._call("clear_log")

    def request_log(self) -> list:
        return self._call("request_log")

    def stop(self) -> None:
        if self._process.is_alive():
            self.peak_rss_mib = self._call("stop")
            self._process.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
