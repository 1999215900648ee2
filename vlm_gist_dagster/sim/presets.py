"""The simulated models that ship with the project (``settings/models/sim_*.json``) and their quality.

The controls live here, keyed by the ``model_name`` the settings files send, so the settings files stay
valid in the paper's format plus our header. A model file may still carry a ``model.simulator`` block
(read from the raw JSON by :func:`~.controls.controls_from_model_files`), which then wins.

Three chat models of clearly different quality, exercising different client paths:

=================  ======  ==============  =========================  ====================================
model_name         recall  hallucinations  wire format                faults (per request)
=================  ======  ==============  =========================  ====================================
``sim/strong``     0.92    0.3 / image     OpenRouter flavour, SSE,   2 % 429
                                           JSON mode
``sim/medium``     0.75    1.0 / image     OpenAI flavour, JSON body, 5 % 429, 2 % 500, 3 % invalid JSON
                                           JSON mode
``sim/weak``       0.50    2.5 / image     vLLM flavour, SSE with     5 % invalid JSON, 5 % length,
                                           reasoning, text mode +     3 % truncated stream, 2 % mid-stream
                                           json_decoder, fences       stall of 20 s (past the 15 s timeout)
=================  ======  ==============  =========================  ====================================
"""

from __future__ import annotations

from .controls import FaultControls, ModelControls

SIM_MODEL_PRESETS: dict[str, ModelControls] = {
    "sim/strong": ModelControls(
        recall=0.92,
        hallucinations=0.3,
        synonym_rate=0.05,
        fenced_rate=0.0,
        latency_mean_s=0.05,
        latency_jitter_s=0.02,
        faults=FaultControls(rate_limit=0.02, retry_after_s=1),
    ),
    "sim/medium": ModelControls(
        recall=0.75,
        hallucinations=1.0,
        synonym_rate=0.2,
        fenced_rate=0.3,
        latency_mean_s=0.1,
        latency_jitter_s=0.05,
        faults=FaultControls(rate_limit=0.05, server_error=0.02, invalid_json=0.03, retry_after_s=1),
    ),
    "sim/weak": ModelControls(
        recall=0.5,
        hallucinations=2.5,
        synonym_rate=0.35,
        fenced_rate=0.7,
        reasoning=True,
        latency_mean_s=0.2,
        latency_jitter_s=0.1,
        faults=FaultControls(
            invalid_json=0.05,
            finish_length=0.05,
            truncated_stream=0.03,
            stall_mid_stream=0.02,
            stall_seconds=20.0,
        ),
    ),
}


def preset_controls() -> dict[str, ModelControls]:
    """A copy of the built-in per-model chat controls."""
    return dict(SIM_MODEL_PRESETS)
