"""Chromium against the running app: the Adapters tab and the chat's Adapter list follow versions made by another
process without a click; the loss plot has numeric axes; a gate-refused promotion and a roll-back ask first; the
Feedback tab's export downloads the user's own rows only. Screenshots at 1366x900 and 390x844 go to tmp_path."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_adapters_ui import untrained_lora
from tests.test_browser import browser, db_rows, send, status_has  # noqa: F401 (browser: a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.browser]
# a loss curve with values above 10: drawn as strings, its axis would read 1.2 < 12.5 < 2.1 ...
LOSSES = [12.5, 9.8, 7.4, 5.1, 3.6, 2.9, 2.1, 1.7, 1.5, 1.2]
REGISTER = """
import json, shutil, sys
from pathlib import Path
from adapters.registry import Registry
from agent.settings import Settings
data, base, lora, gate = sys.argv[1:]
folder = Path(data) / "incoming"
shutil.rmtree(folder, ignore_errors=True)
shutil.copytree(lora, folder)
losses = %r
with open(folder / "metrics.jsonl", "w") as f:
    for i, loss in enumerate(losses, 1):
        f.write(json.dumps({"step": i, "loss": loss, "rewards/margins": i / 4, "rewards/accuracies": min(1, i / 8)}) + "\\n")
reasons = ["similarity 0.12 < active 0.30"] if gate == "refused" else ["preference accuracy 0.80 >= 0.50 + 0.05"]
meta = {"method": "sft", "metrics": {"rows": 12, "final_loss": losses[-1]},
        "gate": {"promote": gate == "passed", "reasons": reasons, "margin": 0.05}}
print(Registry(Settings(data_dir=data, base_model=base)).register(folder, meta))
""" % (LOSSES,)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, base_model_dir):
    """An app of this module's own (a fresh registry and store, whatever other browser tests left behind)."""
    from tests.conftest import running_app

    with running_app(tmp_path_factory.mktemp("adapters-app"), base_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def lora(base_model_dir, tmp_path_factory):
    return untrained_lora(base_model_dir, tmp_path_factory.mktemp("lora") / "lora")


@pytest.fixture
def page(browser, app_server):
    pg = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    pg.goto(app_server["url"])
    pg.wait_for_selector("#message textarea")
    yield pg
    pg.close()


def kaizen(app_server, base_model_dir, *args, timeout=120) -> str:
    env = dict(os.environ, KAIZEN_DATA_DIR=str(app_server["data_dir"]), KAIZEN_BASE_MODEL=str(base_model_dir))
    run = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run.stdout.strip()


def register_elsewhere(app_server, base_model_dir, lora, gate) -> str:
    """A version registered by another process (what `kaizen adapt` does at the end of a run)."""
    out = kaizen(app_server, base_model_dir, "-c", REGISTER, str(app_server["data_dir"]), str(base_model_dir),
                 str(lora), gate)
    return out.splitlines()[-1]


def registry(app_server, base_model_dir):
    from adapters.registry import Registry
    from agent.settings import Settings

    return Registry(Settings(data_dir=app_server["data_dir"], base_model=str(base_model_dir)))


def body_has(page, text, timeout=30_000, where="document.body"):
    page.wait_for_function(f"{where}.innerText.includes({json.dumps(text)})", timeout=timeout)


def shoot(page, tmp_path, name):
    page.wait_for_timeout(800)
    page.screenshot(path=str(tmp_path / f"{name}-1366.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(800)
    page.screenshot(path=str(tmp_path / f"{name}-390.png"), full_page=True)
    page.set_viewport_size({"width": 1366, "height": 900})


def adapter_options(page, shot=None) -> list[str]:
    """The chat's Adapter list as the page has it (opening the dropdown shows it; it refreshes nothing)."""
    page.click("#adapter input")
    page.wait_for_timeout(300)
    options = [o.inner_text().strip() for o in page.locator('[role="option"]').all()]
    if shot:
        page.screenshot(path=str(shot))
    page.keyboard.press("Escape")
    page.locator("#chatbot").click(position={"x": 5, "y": 5})
    return options


def y_tick_labels(page, plot="#loss-plot") -> list[str]:
    """The y axis's tick labels of a plot (vega draws SVG: one group per axis, named by its aria-label)."""
    axes = page.eval_on_selector_all(f"{plot} g.role-axis", "gs => gs.map(g => [g.getAttribute('aria-label') || '', "
                                     "Array.from(g.querySelectorAll('.role-axis-label text')).map(t => t.textContent)])")
    ys = [labels for name, labels in axes if name.lower().startswith("y")]
    assert len(ys) == 1, axes
    return ys[0]


def test_versions_from_another_process_appear_without_a_click(page, app_server, base_model_dir, lora, tmp_path):
    # (this module's app is new: its sidebar says what will be listed there, instead of an empty box)
    body_has(page, "none yet: each chat you start is listed here", where="document.querySelector('#history-sidebar')")
    page.get_by_role("tab", name="Adapters").click()
    body_has(page, "Serving:")
    version = register_elsewhere(app_server, base_model_dir, lora, "passed")
    body_has(page, version, where="document.querySelector('#adapters-table')")  # the timer brought it in
    page.wait_for_timeout(2500)  # the newest version is selected: its curves are drawn
    labels = y_tick_labels(page)
    values = [float(t.replace(",", "")) for t in labels]  # numbers ...
    assert len(values) >= 3 and values == sorted(values), labels  # ... in order along the axis
    assert values[0] < 3 and values[-1] >= 10, labels  # a linear scale over the whole curve (1.2 to 12.5)
    shoot(page, tmp_path, "adapters-new-version")

    page.get_by_role("tab", name="Chat").click()
    assert version not in adapter_options(page)  # registered, not served: not attached
    kaizen(app_server, base_model_dir, "-m", "cli.main", "adapters", "promote", version)  # another process
    deadline = time.time() + 60
    while version not in adapter_options(page):  # the app attaches it (RegistryWatcher) and the list follows
        assert time.time() < deadline, "the chat's Adapter list never listed the promoted version"
        page.wait_for_timeout(2000)
    adapter_options(page, tmp_path / "chat-adapter-list-open-1366.png")
    shoot(page, tmp_path, "chat-adapter-list")


def test_a_refused_version_and_a_roll_back_ask_for_confirmation(page, app_server, base_model_dir, lora, tmp_path):
    reg = registry(app_server, base_model_dir)
    before = reg.active()
    refused = register_elsewhere(app_server, base_model_dir, lora, "refused")
    page.get_by_role("tab", name="Adapters").click()
    body_has(page, refused, where="document.querySelector('#adapters-table')")
    page.click("#adapters-version input")
    page.locator(f'[role="option"]:has-text("{refused}")').first.click()
    body_has(page, f"{refused}: the gate refused it")
    page.get_by_role("button", name="Promote", exact=True).click()
    page.wait_for_selector("#adapters-confirm", state="visible")
    body_has(page, f"Promote {refused} anyway?", where="document.querySelector('#adapters-confirm')")
    assert reg.active() == before  # asked, nothing done
    shoot(page, tmp_path, "confirm-promote")
    page.click("#adapters-confirm-no")
    page.wait_for_selector("#adapters-confirm", state="hidden")
    assert reg.active() == before
    page.get_by_role("button", name="Promote", exact=True).click()
    page.click("#adapters-confirm-yes")
    page.wait_for_selector("#adapters-confirm", state="hidden")
    deadline = time.time() + 30
    while reg.active() != refused:
        assert time.time() < deadline
        time.sleep(0.5)
    body_has(page, f"active:** {refused}".replace("**", ""))
    page.get_by_role("button", name="Roll back").click()
    page.wait_for_selector("#adapters-confirm", state="visible")
    body_has(page, f"retire {refused}", where="document.querySelector('#adapters-confirm')")
    assert reg.active() == refused
    page.click("#adapters-confirm-yes")
    page.wait_for_selector("#adapters-confirm", state="hidden")
    deadline = time.time() + 30
    while reg.active() == refused:
        assert time.time() < deadline
        time.sleep(0.5)

    page.get_by_role("button", name="Train now").click()  # no feedback yet: the outcome says what is missing
    body_has(page, "Nothing was trained. Not enough feedback to train yet.")
    body_has(page, "SFT needs at least 4 gold answers")
    body_has(page, "Last run", where="document.querySelector('#adapters-status')")
    status = page.inner_text("#adapters-status")
    assert "{" not in status and "sft_eval" not in status, status
    shoot(page, tmp_path, "train-now-little-data")


def test_the_feedback_export_downloads_the_users_own_rows(page, app_server, tmp_path):
    from feedback.store import Store

    store = Store(app_server["db"])  # another user's rows in the same database
    try:
        other = store.ensure_user("mallory")
        conv = store.new_conversation(other)
        store.add_message(conv, "user", "mallory's private question", user_id=other)
        a = store.add_message(conv, "assistant", "mallory's private answer", user_id=other)
        store.rate(a, other, 1)
    finally:
        store.close()
    send(page, "Name a bird.")
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Like"]').last.click()
    status_has(page, "👍")
    (answer_id,), = db_rows(app_server, "select id from messages where role='assistant' order by id desc limit 1")
    page.get_by_role("tab", name="Feedback").click()
    page.click("#feedback-export")
    page.wait_for_selector("#feedback-download", state="visible")
    with page.expect_download() as info:
        page.click("#feedback-download")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.name.startswith("kaizen-feedback-local-") and path.suffix == ".jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["type"] == "export" and rows[0]["user"] == "local"
    assert "mallory" not in path.read_text(encoding="utf-8")
    assert any(r["type"] == "message" and r["content"] == "Name a bird." for r in rows)
    assert any(r["type"] == "rating" and r["message_id"] == answer_id and r["value"] == 1 for r in rows)
    shoot(page, tmp_path, "feedback-export")


def test_the_lab_tab_says_how_long_a_run_takes_and_its_empty_table_has_real_columns(page, app_server, tmp_path):
    """Before any run: the results table shows the task's real column names (not 1, 2, 3) and an expected time,
    which follows the task, the techniques, the steps and the items chosen; no server folder is on the page."""
    page.get_by_role("tab", name="Lab").click()
    estimate = page.locator("#lab-estimate")
    page.wait_for_function("document.querySelector('#lab-estimate')?.innerText.includes('Expected time')",
                           timeout=15_000)
    before = estimate.inner_text()
    table = page.locator("#lab-table")
    assert "Technique" in table.inner_text() and "contains" in table.inner_text()
    steps = page.locator("#lab-steps input")
    steps.fill("400")
    steps.press("Enter")
    page.wait_for_function(f"document.querySelector('#lab-estimate').innerText !== {json.dumps(before)}",
                           timeout=15_000)
    assert estimate.inner_text() != before
    page.click("#lab-task input")
    page.locator('[role="option"]:has-text("House style")').first.click()
    page.wait_for_function("document.querySelector('#lab-table')?.innerText.includes('phrase_anywhere')",
                           timeout=15_000)
    assert str(app_server["data_dir"]) not in page.content()
    shoot(page, tmp_path, "lab-before-a-run")
