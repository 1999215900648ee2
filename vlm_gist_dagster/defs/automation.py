"""Declarative automation: what recomputes when.

* ``descriptions`` run ``on_missing``: a new model (or dataset) partition is described once; VLM calls
  are never repeated just because an upstream asset was re-materialised (the nightly schedule and the
  model sensor ask for refreshes explicitly).
* every stage below runs ``eager``: when its inputs change (new descriptions, new detection or
  label-matching settings) it recomputes, partition by partition.
* the ``leaderboard`` is eager *without* the "no missing dependencies" clause, and loads the metrics
  partitions that exist: one failed (model, dataset) pair never blocks it (it lists the missing pairs).
"""

import dagster as dg

DESCRIPTIONS_CONDITION = dg.AutomationCondition.on_missing()
STAGE_CONDITION = dg.AutomationCondition.eager()
LEADERBOARD_CONDITION = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())

benchmark_automation_sensor = dg.AutomationConditionSensorDefinition(
    "benchmark_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the benchmark's automation conditions (new model partitions, settings changes).",
)
