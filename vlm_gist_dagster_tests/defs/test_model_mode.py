"""Real models are refused while the simulator answers (``orchestration.failures.check_model_mode``), and
the flag comes from the services resource, which ``VLM_GIST_SIMULATOR`` fills."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from vlm_gist_dagster.defs.resources import resources_from_environment
from vlm_gist_dagster.orchestration.failures import check_model_mode
from vlm_gist_dagster.protocol.settings import load_model_settings

SETTINGS = Path(__file__).resolve().parents[2] / "settings"


def _model(simulated: bool):
    # simulated models in settings/models, the paper's real ones in settings/paper
    for path in sorted(SETTINGS.glob("models/*.json")) + sorted(
        SETTINGS.glob("paper/description_settings_*.json")
    ):
        model = load_model_settings(path)
        if model.simulated == simulated:
            return model
    raise AssertionError(f"no {'simulated' if simulated else 'real'} model file in settings/")


def test_a_real_model_is_refused_while_the_simulator_answers():
    with pytest.raises(dg.Failure) as failure:
        check_model_mode(_model(simulated=False), simulator=True)
    assert failure.value.allow_retries is False
    assert "simulator is answering" in failure.value.description


@pytest.mark.parametrize(("simulated", "simulator"), [(True, True), (False, False), (True, False)])
def test_other_combinations_pass(simulated: bool, simulator: bool):
    check_model_mode(_model(simulated=simulated), simulator=simulator)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("", False), ("0", False), (None, False)])
def test_the_simulator_flag_comes_from_the_environment_into_the_resource(value, expected, tmp_path):
    env = {"VLM_GIST_DATA_DIR": str(tmp_path)}
    if value is not None:
        env["VLM_GIST_SIMULATOR"] = value
    services = resources_from_environment(env)["services"]
    assert services.simulator is expected
    assert services.directory == tmp_path.resolve()
