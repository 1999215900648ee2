"""Declarative automation: what recomputes when.

* ``descriptions`` (and the dataset tables) run once when missing (``MISSING_CONDITION``): a new model (or
  dataset) partition is described once; VLM calls are never repeated just because an upstream asset was
  re-materialised (the nightly schedule and the model sensor ask for refreshes explicitly).
* every stage below runs ``eager``: when its inputs change (new descriptions, new detection or
  label-matching settings) it recomputes, partition by partition.
* the ``leaderboard`` is eager *without* the "no missing dependencies" clause, and loads the metrics
  partitions that exist: one failed (model, dataset) pair never blocks it (it lists the missing pairs).
"""

import dagster as dg

from .settings_assets import SETTINGS_FILES_SELECTION

#: ``AutomationCondition.on_missing()`` without its reset on the *initial evaluation*. ``on_missing()`` only
#: requests partitions that become missing after the automation sensor first evaluated the asset; the
#: partitions that already exist and are missing then are never requested. Which partitions those are
#: depends on whether ``model_settings_sensor`` or the automation sensor ticks first on a fresh instance
#: (``vlm-gist dev``), and the dataset tables, which nothing else materialises, would always be among them.
#: Here a partition missing at the first evaluation counts as newly missing: it is requested once, like a
#: partition added later. It is still requested only once (not again while it stays missing, e.g. after a
#: failed run): the trigger is "missing became true", remembered until the partition is requested or
#: updated. A partition that a run or a backfill is already computing is not requested again (as
#: ``on_missing()`` / ``eager()`` do): without ``~in_progress()`` the first tick after a backfill was
#: launched requested every partition of the backfill a second time.
MISSING_CONDITION = (
    dg.AutomationCondition.missing()
    .newly_true()
    .since(dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated())
    .with_label("missing_since_last_requested")
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.in_progress()
).with_label("missing (initial evaluation included)")
#: The settings-file assets (``defs.settings_assets``) are lineage: the stages neither wait for them nor
#: react to them (``settings_sensor`` launches what a settings change needs).
_SETTINGS_FILES = SETTINGS_FILES_SELECTION
MISSING_CONDITION = MISSING_CONDITION.ignore(_SETTINGS_FILES)
DESCRIPTIONS_CONDITION = MISSING_CONDITION
STAGE_CONDITION = dg.AutomationCondition.eager().ignore(_SETTINGS_FILES)
LEADERBOARD_CONDITION = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())

benchmark_automation_sensor = dg.AutomationConditionSensorDefinition(
    "benchmark_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the benchmark's automation conditions (new model partitions, settings changes).",
)
