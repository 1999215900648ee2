"""Numbers a reader can trust: sampling uncertainty of the leaderboard (not in the paper; extra columns).

The VLM-GIST dataset has 64 images and the COCO subset 500, so neighbouring rows often differ by less
than their sampling noise. Three questions, three tools:

* How precise is a number? ``bootstrap``: a seeded bootstrap over images (the same resamples for every
  model of a dataset), percentile intervals of F1, precision, recall and mAP, from per-image counts and
  the mAP sweep's entries: the matcher never runs again.
* Is model A better than model B? ``paired``: a paired permutation test of F1 on the same images, for
  every pair of models at once, Holm-corrected over the pairs of a table.
* Where can a model stand? ``ranking``: rank ranges and groups of indistinguishable models (letters)
  from those tests.

``settings`` reads ``settings/statistics.json`` (confidence level, seed, resamples, permutations,
correction). Everything is numpy and deterministic for a given seed.
"""

from __future__ import annotations

from .bootstrap import (
    CountReplicates,
    average_precision_replicates,
    count_replicates,
    percentile_interval,
    pooled_scores,
    resample_counts,
    seeded_generator,
)
from .paired import PairwiseTests, PerImageResults, holm_adjust, paired_permutation_test
from .ranking import compact_letter_display, rank_ranges
from .settings import StatisticsSettings, load_statistics_settings

__all__ = [
    "CountReplicates",
    "PairwiseTests",
    "PerImageResults",
    "StatisticsSettings",
    "average_precision_replicates",
    "compact_letter_display",
    "count_replicates",
    "holm_adjust",
    "load_statistics_settings",
    "paired_permutation_test",
    "percentile_interval",
    "pooled_scores",
    "rank_ranges",
    "resample_counts",
    "seeded_generator",
]
