"""``settings/statistics.json``: how the leaderboard's uncertainty is computed (confidence level, seed,
bootstrap resamples, permutations of the paired test, multiple-comparison correction).

>>> s = StatisticsSettings.model_validate({"seed": 7})
>>> s.confidence_level, s.bootstrap_resamples, s.permutations, s.multiple_comparisons
(0.95, 1000, 'auto', 'holm')
>>> s.permutations_for(pairs=6), s.permutations_for(pairs=1225)
(10000, 49000)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..settings.errors import read_settings_json, validate_settings

#: The fewest permutations ``"auto"`` uses (Monte-Carlo error of a p-value near 0.05: about 0.002).
MIN_AUTO_PERMUTATIONS = 10_000


class StatisticsSettings(BaseModel):
    """The statistics settings; every key optional (defaults below), unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    about: str = Field(default="", alias="_about", description="Free text for the reader of the file.")
    confidence_level: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="Level of the intervals and of the paired tests (alpha = 1 - level).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of every resampling (same seed, same numbers).")
    bootstrap_resamples: int = Field(
        default=1000,
        ge=1000,
        le=1_000_000,
        description="Bootstrap resamples of the images per dataset (percentile intervals need >= 1,000).",
    )
    permutations: int | Literal["auto"] = Field(
        default="auto",
        description="Random permutations per paired test; 'auto' = enough for the correction to be able to "
        "separate every pair (see permutations_for).",
    )
    multiple_comparisons: Literal["holm", "none"] = Field(
        default="holm",
        description="Correction over all pairs of a table: 'holm' (family-wise, the rank ranges hold "
        "simultaneously) or 'none' (each pair at its own level).",
    )

    @field_validator("permutations", mode="before")
    @classmethod
    def _permutations(cls, value: Any) -> Any:
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and 1000 <= value <= 10_000_000
        ):
            return value
        raise ValueError(f"expected 'auto' or an integer between 1,000 and 10,000,000, got {value!r}")

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence_level

    def permutations_for(self, pairs: int) -> int:
        """Permutations per test for a table with ``pairs`` pairs. ``"auto"``: at least 10,000, and with
        Holm at least ``2 * pairs / alpha``, so that a pair no permutation reaches (p = 1 / (R + 1)) passes
        Holm's first step (p <= alpha / pairs) with room to spare: 49,000 for 50 models."""
        if isinstance(self.permutations, int):
            return self.permutations
        if self.multiple_comparisons == "none":
            return MIN_AUTO_PERMUTATIONS
        return max(MIN_AUTO_PERMUTATIONS, math.ceil(2 * max(pairs, 1) / self.alpha - 1e-9))


def load_statistics_settings(path: str | Path) -> StatisticsSettings:
    """The settings in ``path``; a missing file gives the defaults. A bad value is a ``SettingsError``
    naming the file and the key (``statistics.json: key 'bootstrap_resamples': Input should be greater
    than or equal to 1000, got 100``)."""
    path = Path(path)
    if not path.is_file():
        return StatisticsSettings()
    return validate_settings(StatisticsSettings, read_settings_json(path), path)
