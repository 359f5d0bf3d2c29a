"""The MLflow UI in a real browser: what a person looks for after the README's commands.

A real `mlflow server` on 127.0.0.1 serves the session's project store (a teacher, a student and
distillations, 40 steps each); Playwright drives Debian's headless Chromium through it. No browser
is downloaded: if /usr/bin/chromium is missing, the test installs Debian's package, and skips,
saying why, only where that cannot be done. Screenshots go to test-screenshots/ (or
$KDFLOW_SCREENSHOT_DIR) for a person to look at.
"""

import os
import re
from pathlib import Path

import mlflow
import pytest

from scripts.servers import free_port
from tests.conftest import MLFLOW, ROOT, install_debian_package, serving, short_champion_uri

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project_store")]  # tests/conftest.py says why

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's background connections are refused on a closed network; these flags keep it quiet.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    reason = install_debian_package("chromium", CHROMIUM)
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui(project_store):
    url = f"http://127.0.0.1:{free_port()}"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
               "--backend-store-uri", project_store.uri]
    with serving(command, f"{url}/health", env=project_store.env):
        yield url


@pytest.fixture(scope="module")
def screenshots():
    folder = Path(os.environ.get("KDFLOW_SCREENSHOT_DIR", ROOT / "test-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_mlflow_ui_shows_runs_metrics_artifacts_and_alias(browser, ui, store, screenshots):
    distill = mlflow.get_run(store.distill_ids[0])
    experiment_id = distill.info.experiment_id
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    # The experiment lists the runs by name. The teacher that the first distillation trained is
    # its child run (MLflow's multistep pattern), shown once a person expands that row.
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs")
    for name in ("student-seed12-num_steps=40-eval_every=20", "distill-T5-seed12-num_steps=40-eval_every=20"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    assistant = page.get_by_role("button", name="Close", exact=True)  # MLflow's chat panel: not needed here.
    if assistant.count():
        assistant.first.click()
    rows_with_children = page.locator("[role=row] button[data-component-id*='runnamecellrenderer']")
    for index in range(rows_with_children.count()):
        rows_with_children.nth(index).click()
    for name in (f"{kind}-num_steps=40-eval_every=20" for kind in ("teacher-T5-seed12", "student-seed12", "distill-T5-seed12")):
        page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    page.screenshot(path=screenshots / "experiment-runs.png")

    # The distill run shows its test accuracy, its temperature and its teacher.
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{distill.info.run_id}")
    page.get_by_text("test_accuracy", exact=True).wait_for(timeout=60_000)
    body = page.inner_text("body")
    # JavaScript and Python print a double the same shortest way.
    assert re.search(rf"test_accuracy\s+{re.escape(repr(distill.data.metrics['test_accuracy']))}\s", body)
    assert re.search(rf"temperature\s+{re.escape(distill.data.params['temperature'])}\s", body)
    assert "Teacher: run teacher-T5-seed12" in body  # The description, linking to the teacher's run.
    page.screenshot(path=screenshots / "distill-run.png", full_page=True)

    # Its artifacts include the regenerated results table and plot; the plot opens in the preview.
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{distill.info.run_id}/artifacts")
    page.get_by_text("results.md", exact=True).wait_for(timeout=60_000)
    page.get_by_text("results.png", exact=True).click()
    page.locator("img[alt='results.png']").wait_for(timeout=60_000)
    page.screenshot(path=screenshots / "distill-artifacts.png")
    # MLflow's evaluation of the run's model: its confusion matrix opens in the preview too.
    page.get_by_text("confusion_matrix.png", exact=True).click()
    page.locator("img[alt='confusion_matrix.png']").wait_for(timeout=60_000)
    page.get_by_text("per_class_metrics.csv", exact=True).wait_for(timeout=60_000)
    page.screenshot(path=screenshots / "distill-confusion-matrix.png")

    # The registered student shows its champion alias (the short runs' setup has its own).
    alias = short_champion_uri().rsplit("@", 1)[1]
    champion = mlflow.MlflowClient().get_model_version_by_alias("kd-student", alias)
    page.goto(f"{ui}/#/models/kd-student")
    page.get_by_text(alias).first.wait_for(timeout=60_000)
    assert f"Version {champion.version}" in page.inner_text("body")
    page.screenshot(path=screenshots / "kd-student-champion.png")
    page.close()
