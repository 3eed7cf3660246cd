"""
Example 4 approved in a real browser: headless Chromium (Debian's package, ``scripts/chromium.sh``)
driven by Playwright, no browser download. It signs in to Airflow's UI, opens the required action,
fills the form and approves; the step must end ``Succeeded`` with the entered outputs.

Its screenshot of the request is the README's (``docs/images/approval-request.png``): run with
``SAGEMAKER_CALLBACK_SCREENSHOTS=1`` to write it there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import STACK_USERS, unique
from tests.system.stack import ROOT, AirflowStack
from tests.system.test_approval import requested

pytestmark = [
    pytest.mark.system,
    pytest.mark.xdist_group("stack"),
    pytest.mark.skipif(not _airflow.AIRFLOW_V_3_1_PLUS, reason="human-in-the-loop tasks need Airflow 3.1"),
]

DAG_ID = "example_sagemaker_callback_approval"
SCREENSHOT = ROOT / "docs" / "images" / "approval-request.png"
#: As this machine's Chromium runs headless as root, with no network beyond loopback.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    return subprocess.run(
        [str(ROOT / "scripts" / "chromium.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_person_approves_in_the_browser_and_the_step_gets_the_entered_outputs(
    emulator: CallbackEmulator, callback_queue: str, stack: AirflowStack, chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    pipeline = unique("approval-example")
    emulator.create_pipeline(
        pipeline, json.loads((ROOT / "example_dags" / "pipelines" / "approval.json").read_text())
    )
    stack.wait_for_dag(DAG_ID)
    run_id = unique("run")
    stack.trigger(DAG_ID, {"queue_url": callback_queue, "pipeline_name": pipeline}, run_id)
    requested(stack, DAG_ID, run_id, task_id="approve_model", within=300)
    arn = stack.xcom(DAG_ID, run_id, "start_pipeline")
    token = emulator.step(arn, "ApproveModel")["Metadata"]["Callback"]["CallbackToken"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{stack.api}/")
            page.get_by_label("Username").fill("approver")
            page.get_by_label("Password").fill(STACK_USERS["approver"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
            page.goto(f"{stack.api}/dags/{DAG_ID}/runs/{run_id}/tasks/approve_model/required_actions")
            page.get_by_text("Register churn-model?").wait_for(timeout=60_000)
            page.get_by_text("0.912").wait_for()  # the metrics, from the step's arguments
            assert token not in page.content()
            page.locator("input[name='element_traffic_percent']").fill("30")
            page.locator("input[name='element_comment']").fill("AUC above the bar")
            shot = tmp_path / "approval-request.png"
            page.screenshot(path=str(shot), full_page=True)
            page.get_by_role("button", name="Approve").click()
            assert stack.wait_for_runs(DAG_ID, [run_id], within=180) == {run_id: "success"}
        finally:
            browser.close()

    assert emulator.wait_for_execution(arn, timeout=60) == "Succeeded"
    step = emulator.step(arn, "ApproveModel")
    assert step["StepStatus"] == "Succeeded"
    sent = {p["Name"]: p["Value"] for p in step["Metadata"]["Callback"]["OutputParameters"]}
    assert sent["traffic_percent"] == "30"
    assert sent["register"] == "true"
    assert sent["approved_by"] == "approver"
    assert emulator.step(arn, "RegisterModel")["StepStatus"] == "Succeeded"
    if os.environ.get("SAGEMAKER_CALLBACK_SCREENSHOTS"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
