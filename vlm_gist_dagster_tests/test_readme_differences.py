"""README's "Reproducing the paper exactly" lists every deliberate difference from the paper (issue 15
item 7), and the numbers it states are the code's: the section is checked against the constants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vlm_gist_dagster.clients.transport import RetryPolicy
from vlm_gist_dagster.clients.vision import VisionClient
from vlm_gist_dagster.protocol.settings import DescriptionSettings
from vlm_gist_dagster.stages.label_matching import MAX_DEFINITION_ATTEMPTS
from vlm_gist_dagster.stages.validation import MAX_VALIDATION_ATTEMPTS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Reproducing the paper exactly")
    return readme[start : readme.index("\n## ", start + 1)]


def bullet(section: str, title: str) -> str:
    """The text of the bullet whose bold title is ``title``."""
    match = re.search(r"^- \*\*" + re.escape(title) + r"\*\*(.*?)(?=^- |\Z)", section, re.S | re.M)
    assert match, f"README's 'Reproducing the paper exactly' has no bullet '{title}'"
    return " ".join(match.group(1).split())


@pytest.mark.parametrize(
    "title",
    [
        "Transport errors are not a model's failures.",  # counted as failed attempts by the paper
        "Time covers the HTTP exchange.",  # the paper's stamp covered its job's own work
        "Retries are bounded where the paper retried forever.",
        "The first of equally described objects.",  # the paper picked at random
        "Vision servers get clean requests.",
        "An empty answer is a failed attempt.",
        "Answers are cached by the service that gave them.",
        "No API probe.",
        "Weighted table rows.",
    ],
)
def test_every_deliberate_difference_is_listed(section, title):
    assert len(bullet(section, title)) > 100


def test_the_numbers_in_the_section_are_the_codes(section):
    transport = bullet(section, "Transport errors are not a model's failures.")
    assert f"up to {RetryPolicy().max_retries} retries per request" in transport
    bounded = bullet(section, "Retries are bounded where the paper retried forever.")
    assert f"Vision server calls: {VisionClient.default_retry.max_retries} retries" in bounded
    assert f"label-matching definitions: {MAX_DEFINITION_ATTEMPTS} attempts" in bounded
    assert f"validation answers: {MAX_VALIDATION_ATTEMPTS} attempts" in bounded
    cap = DescriptionSettings.model_fields["unlimited_retry_cap"].default
    assert f"`unlimited_retry_cap` ({cap}) attempts" in bounded
