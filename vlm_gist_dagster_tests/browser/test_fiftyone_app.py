"""Issue 18 (d): after a small simulated run (the COCO sample, two simulated VLMs), ``vlm-gist review``
builds the review dataset and opens the FiftyOne App on 127.0.0.1; the page shows the dataset, every
model's stage and evaluation fields in the sidebar and the sample count, its images are served, and
the Model Evaluation panel lists one evaluation per model. Screenshots are saved among the test
artefacts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from vlm_gist_dagster.defs.io_manager import read_parquet

from ..review.simulated_run import simulated_deployment
from .servers import ServerProcess, environment, free_port

DATASET = "coco"
MODELS = ("sim_strong", "sim_weak")
#: What FiftyOne's own index.html asks of the internet (its web fonts); aborted here, never reached.
FIFTYONE_FONT_HOSTS = {"fonts.googleapis.com"}


@pytest.fixture(scope="module")
def simulated_run(simulator, tmp_path_factory):
    return simulated_deployment(tmp_path_factory.mktemp("deployment"), [DATASET], MODELS)


def test_review_opens_the_fiftyone_app_with_every_model_field(simulated_run, new_page, tmp_path):
    from playwright.sync_api import expect

    deployment = simulated_run
    num_images = len(read_parquet(deployment.assets_dir / "dataset_images" / f"{DATASET}.parquet"))
    port = free_port()
    env = environment(
        **deployment.environ(),
        FIFTYONE_DATABASE_DIR=str(tmp_path / "fiftyone_db"),
        FIFTYONE_DO_NOT_TRACK="true",
    )
    command = [
        Path(sys.executable).with_name("vlm-gist"),
        "review",
        "--dataset",
        DATASET,
        "--port",
        str(port),
    ]
    with ServerProcess(command, env=env, log_path=tmp_path / "review.log") as server:
        url = server.wait_for_output(r"FiftyOne App: (http://127\.0\.0\.1:\d+/\S+)", timeout=600).group(1)
        assert url == f"http://127.0.0.1:{port}/datasets/vlm-gist-{DATASET}"
        log = server.log_text()
        for model in MODELS:  # FiftyOne's evaluation in the review process equals the stored metrics
            assert re.search(rf"{model}\s+built\s+TP.*\(= metrics\)", log), log
        server.wait_for_http(url, timeout=120)

        browser = new_page()
        page = browser.page
        served = []
        page.on("response", lambda r: served.append(r.status) if "/media?" in r.url else None)
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text(f"{num_images} samples", exact=True)).to_be_visible(timeout=120_000)
        expect(page.locator('[data-cy="selector-dataset"]')).to_have_value(f"vlm-gist-{DATASET}")
        fields = (
            ["ground_truth"]
            + [
                f"{model}_{stage}"
                for model in MODELS
                for stage in ("predictions", "label_matches", "masks", "detections", "described")
            ]
            + [f"eval_{model}_{count}" for model in MODELS for count in ("tp", "fp", "fn")]
        )
        for name in fields:
            expect(page.get_by_text(name, exact=True)).to_be_visible()
        for model in MODELS:  # one sidebar group per model (FiftyOne shows group names upper-cased)
            expect(page.locator(f'input[value="{model.upper()}"]')).to_be_visible()
        # the grid loads the images from the App server
        page.wait_for_function(
            "n => document.querySelectorAll('canvas').length >= n", arg=min(num_images, 8), timeout=60_000
        )
        page.wait_for_timeout(2_000)
        assert served and all(status == 200 for status in served), served
        dismiss = page.get_by_text("Dismiss", exact=True)  # FiftyOne's "Explore Enterprise" pop-up
        if dismiss.count():
            dismiss.first.click()
            page.wait_for_timeout(500)
        browser.screenshot("fiftyone_review_app.png")

        # the Model Evaluation panel lists one evaluation per model
        page.locator('[data-cy="new-panel-btn"]').first.click()
        page.get_by_text("Model Evaluation", exact=True).first.click()
        expect(page.get_by_text(f"{len(MODELS)} Model Evaluations", exact=True)).to_be_visible(timeout=60_000)
        for model in MODELS:
            expect(page.get_by_text(f"eval_{model}", exact=True).filter(visible=True).first).to_be_visible()
        browser.screenshot("fiftyone_review_evaluations.png")

    # nothing but FiftyOne's own web-font stylesheet was requested from elsewhere (and it was aborted)
    assert browser.blocked_hosts() <= FIFTYONE_FONT_HOSTS, browser.blocked
