"""Jobs: what `vlm-gist run`, backfills and the UI launch.

* ``datasets_job`` (per dataset): the dataset tables and that dataset's label-matching settings.
* ``settings_job``: the detection settings.
* ``benchmark_pair_job`` (per (dataset, model)): stages A–E for one pair. Backfill by model partition
  from the UI (select the model's partitions) or the CLI, one run per partition. Its partitioned config
  tags every run with the provider of the model's descriptions (``vlm_gist/provider``, ModelsResource.provider_tags),
  which deploy/dagster.yaml limits per provider.
* ``leaderboard_job``: the tables from every pair's metrics.
"""

import dagster as dg

from .datasets import dataset_tables
from .metrics import leaderboard
from .partitions import model_dataset_partitions, split_pair_key
from .resources import ModelsResource, resources_from_environment
from .selections import PAIR_SELECTION
from .settings_assets import detection_settings, label_matching_settings


def pair_provider_tags(partition_key: str) -> dict[str, str]:
    """The tags of ``benchmark_pair_job`` for one (dataset, model) partition: the provider tag
    (``ModelsResource.provider_tags``), with the models folder the resources are configured with (read
    when a run is launched, never failing the launch)."""
    try:
        _, model_key = split_pair_key(partition_key)
        models = resources_from_environment()["models"]
        assert isinstance(models, ModelsResource)
        return models.provider_tags(model_key)
    except Exception:
        return {}


datasets_job = dg.define_asset_job(
    "datasets_job",
    selection=dg.AssetSelection.assets(dataset_tables, label_matching_settings),
    description="Load (downloading once if needed) a benchmark dataset and its label-matching settings.",
)
settings_job = dg.define_asset_job(
    "settings_job",
    selection=dg.AssetSelection.assets(detection_settings),
    description="Read the detection settings.",
)
benchmark_pair_job = dg.define_asset_job(
    "benchmark_pair_job",
    selection=PAIR_SELECTION,
    description="Stages A–E (descriptions → … → metrics) for one (dataset, model) partition.",
    tags={"vlm_gist/job": "pair"},
    partitions_def=model_dataset_partitions,
    # No run config; the tags of each partition name its provider (launches, job backfills, vlm-gist run).
    config=dg.PartitionedConfig(
        partitions_def=model_dataset_partitions,
        run_config_for_partition_key_fn=lambda _: {},
        tags_for_partition_key_fn=pair_provider_tags,
    ),
)
leaderboard_job = dg.define_asset_job(
    "leaderboard_job",
    selection=dg.AssetSelection.assets(leaderboard),
    description="Rebuild the leaderboard.",
)
