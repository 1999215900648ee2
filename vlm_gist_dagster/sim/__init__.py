"""Offline simulator: local HTTP servers speaking the OpenAI-compatible and NimbRo vision protocols,
answering from the datasets' ground truth with configurable quality, latency and faults (DESIGN §5).

>>> from vlm_gist_dagster.sim import run_simulator                              # doctest: +SKIP
>>> with run_simulator({"vlm_gist": "../shared/datasets/vlm_gist"}, ports={n: 0 for n in
...         ("chat", "mmgroundingdino", "sam2_realtime", "florence2", "kosmos2")}) as sim:  # doctest: +SKIP
...     sim.set_controls("chat", model="sim/strong", faults={"rate_limit": 0.3})
...     # point clients at sim.chat_url / sim.vision_urls[...]; count calls in sim.request_log

Servers bind to 127.0.0.1 only. ``vlm-gist sim`` starts them from the command line.
"""

from .controls import (
    FAULT_TYPES,
    SERVER_NAMES,
    VISION_FAMILIES,
    FaultControls,
    ModelControls,
    ServerControls,
    SimControlsError,
    controls_from_model_files,
    default_controls,
)
from .log import RequestLog, RequestRecord
from .presets import SIM_MODEL_PRESETS
from .server import DEFAULT_PORTS, HOST, SimulatorHandle, SimulatorStartError, run_simulator, start_simulator
from .world import UnknownImageError, World, fingerprint, load_world

__all__ = [
    "DEFAULT_PORTS",
    "FAULT_TYPES",
    "HOST",
    "SERVER_NAMES",
    "SIM_MODEL_PRESETS",
    "VISION_FAMILIES",
    "FaultControls",
    "ModelControls",
    "RequestLog",
    "RequestRecord",
    "ServerControls",
    "SimControlsError",
    "SimulatorHandle",
    "SimulatorStartError",
    "UnknownImageError",
    "World",
    "controls_from_model_files",
    "default_controls",
    "fingerprint",
    "load_world",
    "run_simulator",
    "start_simulator",
]
