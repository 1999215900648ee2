"""Issue 18 (a)-(c): the Dagster UI (``dg dev``: webserver, daemon, code server) on a temporary instance
after a small simulated run (the COCO sample, two simulated VLMs, the leaderboard), driven by Chromium:

(a) the global asset graph, groups expanded, shows every asset of the definitions;
(b) the leaderboard's asset page shows one table per leaderboard table with a row for every model, the
    paper-format text, and the plots as images (behind "[Show Markdown]": the UI shows Markdown over
    1,000 characters in a dialog);
(c) launching a missing partition by clicking (``review_dataset`` page → Materialize… → partition
    ``coco`` → Launch 1 run) starts a run that succeeds, and its materialisation is recorded.

Runs that the daemon's sensors and automation would launch for the partitions this small run left
missing (the VLM-GIST dataset) are held in the run queue (``dagster.yaml``: tag limits 0), so that only
what the test clicks runs. Screenshots are saved among the test artefacts.
"""

from __future__ import annotations

import re
import time

import dagster as dg
import pytest

from vlm_gist_dagster.definitions import build_definitions
from vlm_gist_dagster.runner import INSTANCE_YAML

from ..deployment import Deployment
from .dagster_ui import MODELS, dagster_dev, fiftyone_uri, simulated_instance

#: Runs launched by sensors, automation and schedules wait in the queue: only clicks run (a partition
#: launched from the asset page is a one-partition backfill, so backfills are not held).
QUEUE_YAML = """
run_queue:
  tag_concurrency_limits:
    - key: dagster/sensor_name
      limit: 0
    - key: dagster/auto_materialize
      limit: 0
    - key: dagster/schedule_name
      limit: 0
"""
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ui(simulator, tmp_path_factory):
    root = tmp_path_factory.mktemp("dagster_ui")
    home = Deployment(root).home
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(INSTANCE_YAML + QUEUE_YAML)
    deployment = simulated_instance(root)
    with dagster_dev(deployment, root / "dg_dev.log", FIFTYONE_DATABASE_URI=fiftyone_uri(root)) as server:
        yield server


def _open(new_page, url: str):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    browser = new_page()
    page = browser.page
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Lineage", exact=True).first.wait_for(timeout=120_000)
    # the first visit of an instance shows Dagster's "Join the Dagster community" dialog
    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(timeout=5_000)
        skip.click()
    except PlaywrightTimeout:
        pass
    return browser


def test_asset_graph_shows_every_asset(ui, new_page):
    from playwright.sync_api import expect

    browser = _open(new_page, f"{ui.url}/asset-groups")
    page = browser.page
    # the graph is drawn: its button counts the materialisable assets ("Materialize all (13)…"; the
    # settings files are external assets, observed, not materialised)
    graph_drawn = page.get_by_text(re.compile(r"^Materialize all( \(\d+\))?…$")).first
    expect(graph_drawn).to_be_visible(timeout=120_000)
    page.get_by_text("Hide navigation", exact=True).click()
    # groups start collapsed: the graph's settings menu expands them all
    page.locator('button:has([data-icon="settings"]), button:has([aria-label="settings"])').last.click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.reload(wait_until="domcontentloaded")  # laid out again to fit, groups expanded
    expect(graph_drawn).to_be_visible(timeout=120_000)
    assets = sorted(
        k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()
    )
    assert len(assets) >= 13, assets
    for group in ("benchmark", "datasets", "review", "settings"):
        expect(page.get_by_text(group, exact=True).first).to_be_visible()
    zoom_out = page.locator('button:has([data-icon="zoom_out"]), button:has([aria-label="zoom_out"])').last
    for _ in range(2):
        zoom_out.click()
        page.wait_for_timeout(300)
    for asset in assets:
        # long names are shortened in the node ("label_ma…_settings", "lab…_settings_file"), the full
        # name is its title
        shortened = rf"{re.escape(asset[:3])}.*….*{re.escape(asset[-4:])}"
        node = page.get_by_text(re.compile(rf"^({re.escape(asset)}|{shortened})$"))
        expect(node.first, asset).to_be_visible()
    page.wait_for_timeout(1000)
    browser.screenshot("dagster_asset_graph.png")
    assert not browser.blocked_hosts(), browser.blocked


def test_leaderboard_page_shows_every_table_with_every_model(ui, new_page):
    from playwright.sync_api import expect

    deployment = ui.deployment
    board = deployment.read("leaderboard")
    names = sorted(set(board["name"]))
    assert len(names) == len(MODELS)
    browser = _open(new_page, f"{ui.url}/assets/leaderboard")
    page = browser.page
    expect(page.get_by_text("table_coco", exact=True).last).to_be_visible(timeout=120_000)
    page.get_by_text("Columns", exact=True).first.click()  # fold the column schema away
    for table in sorted(set(board["table"])):
        label = page.get_by_text(f"table_{table}", exact=True).last  # the first: the description
        row = page.locator("tr").filter(has=label)
        for name in names:  # one row of the table per model, with its F1 (4 decimals)
            f1 = board[(board["table"] == table) & (board["name"] == name)]["f1"].iloc[0]
            cells = row.locator("tr").filter(has_text=name)
            expect(cells.first).to_be_visible()
            expect(cells.first).to_contain_text(f"{round(float(f1), 4):g}")
    # the pairs this small run left out (VLM-GIST), and why
    for name in MODELS:
        expect(page.get_by_text(f"vlm_gist|{name}", exact=True).first).to_be_visible()
    expect(page.get_by_text("2 of 4 pairs have no metrics", exact=False).first).to_be_visible()
    text = (deployment.leaderboard_dir / "coco.txt").read_text()
    expect(page.get_by_text(text.splitlines()[0].strip()).first).to_be_visible()
    page.get_by_text("table_coco", exact=True).last.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)
    browser.screenshot("dagster_leaderboard.png")

    # a plot: its Markdown (a data: URI PNG) opens in a dialog and renders as an image
    plot = page.locator("tr").filter(has=page.get_by_text("plot_f1", exact=True).last)
    plot.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator('img[src^="data:image/png;base64,"]')
    expect(image).to_be_visible(timeout=30_000)
    assert image.evaluate("img => img.complete && img.naturalWidth") > 300
    browser.screenshot("dagster_leaderboard_plot.png")


def test_launching_a_missing_partition_from_the_ui_runs_and_succeeds(ui, new_page):
    from playwright.sync_api import expect

    instance = ui.deployment.instance()
    key = dg.AssetKey("review_dataset")
    try:
        assert "coco" not in instance.get_materialized_partitions(key)
        before = {r.run_id for r in instance.get_runs()}

        browser = _open(new_page, f"{ui.url}/assets/review_dataset")
        page = browser.page
        page.get_by_role("button", name="Materialize…").click(timeout=120_000)
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Launch runs to materialize review_dataset")).to_be_visible()
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_role("menuitem").filter(has_text="coco").click()
        browser.screenshot("dagster_launch_partition.png")
        # The open partition list covers the dialog and eats the next click outside it: close it with
        # Escape (the topmost overlay, the list, takes it; the dialog stays), then launch.
        partition_filter = page.get_by_placeholder("Filter partitions")
        if partition_filter.is_visible():
            partition_filter.press("Escape")
        expect(partition_filter).to_be_hidden()
        expect(dialog.get_by_role("button", name="Launch 1 run")).to_be_visible()
        dialog.get_by_role("button", name="Launch 1 run").click()
        expect(dialog).to_be_hidden(timeout=60_000)

        deadline = time.monotonic() + RUN_TIMEOUT_S
        run = None
        while time.monotonic() < deadline:
            new = [
                r
                for r in instance.get_runs()
                if r.run_id not in before and r.tags.get("dagster/partition") == "coco"
            ]
            run = new[0] if new else None
            if run is not None and run.is_finished:
                break
            time.sleep(2)
        assert run is not None, "no run was launched by the click"
        assert run.asset_selection == {key}
        assert run.status == dg.DagsterRunStatus.SUCCESS, ui.server.log_text()[-3000:]
        assert "coco" in instance.get_materialized_partitions(key)
        meta = instance.fetch_materializations(key, limit=1).records[0].asset_materialization.metadata
        assert meta["models"].value == list(MODELS)

        page.goto(f"{ui.url}/runs/{run.run_id}", wait_until="domcontentloaded")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=60_000)
        browser.screenshot("dagster_launched_run.png")
    finally:
        instance.dispose()
