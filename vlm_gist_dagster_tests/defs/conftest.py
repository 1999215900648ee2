"""Helpers of the benchmark-graph tests (issue 7) that tick the sensors as the daemon does.

The tests run on a :class:`~vlm_gist_dagster_tests.deployment.Deployment` (the ``deployment`` fixture,
or one created per module) and the ``simulator`` fixture (one simulator per module, in the test
process on ephemeral loopback ports, with a fixed seed and every simulated chat model's latency and
faults at 0; tests about faults set their own); both come from ``vlm_gist_dagster_tests/conftest.py``.
"""

from __future__ import annotations

import dagster as dg

from ..deployment import Deployment


def tick_model_sensor(
    deployment: Deployment, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorResult:
    """One tick of ``model_settings_sensor`` on ``deployment``'s models folder (its ``models`` resource)."""
    from vlm_gist_dagster.defs.sensors import model_settings_sensor

    resources = {"models": deployment.resources()["models"]}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = model_settings_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def apply_partition_requests(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with a sensor's dynamic partition requests."""
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest), request
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
