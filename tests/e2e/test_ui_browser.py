"""`tunellm ui` in a real browser (Debian's headless Chromium driven by Playwright), used as a person would:
chat with the default model, label a data file (edit, add, undo, reload, export, read back with
`tunellm data stats`), edit one record from two browser contexts, and train 4 steps from the Train page.

Screenshots of each page go to the test's tmp folder; with TUNELLM_UI_SCREENSHOTS=DIR, small copies
for the README go to DIR too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tunellm.data.formats import ReadOptions
from tunellm.data.read import read_conversations
from tunellm.ui.store import LabelStore

CHROMIUM = os.environ.get("TUNELLM_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE = Path(__file__).resolve().parents[2] / "tunellm" / "samples" / "identity_train.json"  # Apache-2.0
DATA = "data/identity.json"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None or importlib.util.find_spec("gradio") is None,
        reason="needs the ui and dev extras (gradio, playwright)",
    ),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`tunellm ui` on a free loopback port, over a root folder holding 8 rows of the bundled identity data."""
    root = tmp_path_factory.mktemp("ui-root")
    (root / "data").mkdir()
    rows = json.loads(SAMPLE.read_text(encoding="utf-8"))[:8]
    (root / DATA).write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    command = [sys.executable, "-m", "tunellm", "ui", "--port", str(port), "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(
        [*command, "--runs", str(root / "runs")], stdout=log, stderr=subprocess.STDOUT, env=env
    )  # one thread: the test shares 2 cores with other runs, and the training run inherits it
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        assert server.poll() is None, (root / "server.log").read_text()
    else:
        pytest.fail("the ui did not start: " + (root / "server.log").read_text())
    yield {"url": url, "root": root, "rows": rows}
    server.terminate()
    server.wait(30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")

    def shoot(page, name):
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        copies = os.environ.get("TUNELLM_UI_SCREENSHOTS")
        if copies:
            from PIL import Image

            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((900, 1100))
                small = image.quantize(colors=64)
                Path(copies).mkdir(parents=True, exist_ok=True)
                small.save(Path(copies) / f"{name}.png", optimize=True)
        return path

    return shoot


def wait_text(page, selector, text, timeout=60):
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout * 1000,
    )


def open_tab(browser, app, name):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app["url"])
    page.wait_for_selector("#chat-message textarea", timeout=60_000)
    page.get_by_role("tab", name=name).click()
    return page


def open_file(page, path=DATA):
    box = page.get_by_label("Data file (under the root folder)")
    box.fill(path)
    box.press("Enter")
    page.click("#label-open")
    wait_text(page, "#label-opened", "records")


def select_record(page, number):
    page.click(f'#label-table [data-testid="cell-{number - 1}-2"]')
    wait_text(page, "#label-current", f"Record {number} ")


def save(page, expect="saved"):
    page.click("#label-save")
    wait_text(page, "#label-message", expect)


def test_chat_with_the_default_model(browser, app, screens):
    page = open_tab(browser, app, "Chat")
    page.get_by_text("Settings").click()
    tokens = page.get_by_label("number input for Max new tokens")
    tokens.fill("8")
    tokens.press("Tab")
    page.fill("#chat-message textarea", "What is the capital of France?")
    page.press("#chat-message textarea", "Enter")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chat-left [data-testid=\"bot\"]');"
        " return b.length > 0 && b[b.length - 1].innerText.trim().length > 0; }",
        timeout=120_000,
    )
    wait_text(page, "#chat-left", "capital of France")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.trim() === ''", timeout=60_000)
    page.get_by_label("Side by side (both answer each prompt)").check()
    page.fill("#chat-message textarea", "And of Italy?")
    page.press("#chat-message textarea", "Enter")
    wait_text(page, "#chat-right", "And of Italy?")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.trim() === ''", timeout=60_000)
    bots = page.locator('#chat-right [data-testid="bot"]')
    assert bots.count() == 1 and bots.first.inner_text().strip()  # the second model answered the new prompt
    assert page.locator('#chat-left [data-testid="bot"]').count() == 2  # the first model, its second turn
    screens(page, "chat")
    page.close()


def test_label_edit_add_undo_reload_export(browser, app, screens):
    root, rows = app["root"], app["rows"]
    page = open_tab(browser, app, "Label")
    open_file(page)
    select_record(page, 2)
    page.fill("#label-response textarea", "Edited in the browser.")
    save(page)
    page.click("#label-add")
    wait_text(page, "#label-current", "Record 9 ")
    page.fill("#label-prompt textarea", "What is tunellm?")
    page.fill("#label-response textarea", "A fine-tuning toolkit.")
    save(page)
    select_record(page, 3)
    page.fill("#label-response textarea", "This edit is undone.")
    save(page)
    page.click("#label-undo")
    wait_text(page, "#label-message", "undid your last change to record 3")
    screens(page, "label")

    page.reload()  # the page reopens the file it had open, from the store
    page.get_by_role("tab", name="Label").click()
    wait_text(page, "#label-opened", "9 records")
    select_record(page, 2)
    assert page.input_value("#label-response textarea") == "Edited in the browser."
    select_record(page, 3)
    assert page.input_value("#label-response textarea") == rows[2]["output"]
    select_record(page, 9)
    assert page.input_value("#label-prompt textarea") == "What is tunellm?"

    page.fill("#label-export-path textarea", "data/exported.jsonl")
    page.click("#label-export")
    wait_text(page, "#label-message", "wrote 9 records")
    page.fill("#label-export-path textarea", "../outside.jsonl")
    page.click("#label-export")
    wait_text(page, "#label-message", "outside the folder")
    page.close()
    assert not (root.parent / "outside.jsonl").exists()

    stats = subprocess.run(
        [sys.executable, "-m", "tunellm", "data", "stats", str(root / "data/exported.jsonl"), "--json"]
        + ["--histogram", str(root / "lengths.png")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(stats.stdout.strip().splitlines()[-1])["rows"] == 9
    read = read_conversations([str(root / "data/exported.jsonl")], ReadOptions()).conversations
    assert read[1].turns[-1].content == "Edited in the browser."
    assert read[2].turns[-1].content == rows[2]["output"]
    assert (read[8].turns[0].content, read[8].turns[-1].content) == ("What is tunellm?", "A fine-tuning toolkit.")


def test_two_browser_contexts_editing_the_same_record_lose_no_change(browser, app, screens):
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(app["url"])
        page.wait_for_selector("#chat-message textarea", timeout=60_000)
        page.get_by_role("tab", name="Label").click()
        open_file(page)
        select_record(page, 4)
        pages.append(page)
    first, second = pages
    first.fill("#label-prompt textarea", "Instruction from tab A")
    save(first)
    second.fill("#label-response textarea", "Answer from tab B")
    save(second, "merged with a change made in another tab")  # different fields: both kept

    for page in pages:
        select_record(page, 5)
    first.fill("#label-response textarea", "A was first")
    save(first)
    second.fill("#label-response textarea", "B was second")
    save(second, "Conflict")  # the same field: shown, not overwritten
    assert "A was first" in second.inner_text("#label-message")
    assert second.input_value("#label-response textarea") == "B was second"  # B's text is not lost
    screens(second, "label-conflict")

    store = LabelStore(app["root"] / ".tunellm" / "labels.sqlite")
    dataset = store.open_file(app["root"] / DATA).id
    fourth, fifth = store.page(dataset, after=2, limit=2)
    assert (fourth.data["instruction"], fourth.data["output"]) == ("Instruction from tab A", "Answer from tab B")
    assert fifth.data["output"] == "A was first"
    second.click("#label-keep-mine")
    wait_text(second, "#label-message", "saved")
    assert store.get(fifth.id).data["output"] == "B was second"
    for page in pages:
        page.context.close()


def test_train_four_steps_from_the_train_page(browser, app, screens):
    page = open_tab(browser, app, "Train")
    data = page.get_by_label("Training data")
    data.fill(DATA)
    data.press("Enter")
    page.fill("#train-run-name input, #train-run-name textarea", "browser-run")
    for selector, value in (("#train-max-steps", "4"), ("#train-cutoff", "64")):
        page.fill(f"{selector} input", value)
    page.get_by_label("batch size").fill("2")
    page.get_by_label("More keys, one key=value per line (e.g. data.template=chatml)").fill(
        "train.logging_steps=1\ntrain.report_to=none"
    )
    page.click("#train-start")
    wait_text(page, "#train-state", "browser-run", timeout=60)
    wait_text(page, "#train-state", "finished", timeout=240)
    page.wait_for_function(  # vega drew the loss as a line: a path through the points, on numeric axes
        "() => { const p = document.querySelector('#train-curve .mark-line path');"
        " return p && (p.getAttribute('d') || '').includes('L'); }",
        timeout=30_000,
    )
    assert "checkpoint to use" in page.inner_text("#train-state")
    screens(page, "train")
    log = app["root"] / "runs" / "browser-run" / "train_log.jsonl"
    losses = [entry for entry in map(json.loads, log.read_text().splitlines()) if "loss" in entry]
    assert [entry["step"] for entry in losses] == [1, 2, 3, 4]
    page.reload()  # a reopened page shows the run
    page.get_by_role("tab", name="Train").click()
    wait_text(page, "#train-state", "browser-run: finished", timeout=30)
    page.close()


def test_evaluate_the_run_against_its_base(browser, app, screens):
    page = open_tab(browser, app, "Evaluate")
    for label, value in (("Data file to score", DATA), ("Run (its best checkpoint vs its base model)", "browser-run")):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Enter")
    page.get_by_label("Rows (0: all)").fill("2")
    page.get_by_label("Max new tokens (0: the run's generate.max_new_tokens)").fill("4")
    page.click("#eval-start")
    wait_text(page, "#eval-state", "evaluation: running", timeout=30)
    wait_text(page, "#eval-state", "evaluation: finished", timeout=150)
    wait_text(page, "#eval-table", "base")
    page.wait_for_selector("#eval-chart img", timeout=30_000)
    screens(page, "evaluate")
    page.close()
    assert (app["root"] / "runs" / "browser-run" / "ui-eval" / "metrics.md").is_file()  # what `tunellm eval -o` wrote
