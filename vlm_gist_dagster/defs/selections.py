"""The asset selections that jobs, sensors, the schedule and tests share, built from the asset definitions
(not from copied name strings): rename or add a stage in one place.

* :data:`PAIR_SELECTION` / :data:`PAIR_ASSET_KEYS`: the per-(dataset, model) stages A-E, in graph order
  (``benchmark_pair_job``, the model sensor's refreshes, the nightly schedule).
* :data:`VALIDATION_ASSET_KEYS`: the validations and the pair stages below them (re-run when a model's
  validation file changes).
"""

from __future__ import annotations

import dagster as dg

from .descriptions import descriptions
from .grounding import detections, masks
from .label_matches import label_matches
from .metrics import metrics
from .validations import validations

#: The per-pair stages in graph order (a multi-asset stage brings each of its assets).
PAIR_STAGES: tuple[dg.AssetsDefinition, ...] = (
    descriptions,
    detections,
    masks,
    validations,
    label_matches,
    metrics,
)


def asset_keys(stages: tuple[dg.AssetsDefinition, ...]) -> tuple[dg.AssetKey, ...]:
    """Every asset key of ``stages``, in order (the specs' order within a multi-asset)."""
    return tuple(spec.key for stage in stages for spec in stage.specs)


PAIR_SELECTION = dg.AssetSelection.assets(*PAIR_STAGES)
PAIR_ASSET_KEYS = asset_keys(PAIR_STAGES)
VALIDATION_ASSET_KEYS = asset_keys(PAIR_STAGES[PAIR_STAGES.index(validations) :])
