"""The served dashboard in a real browser: Debian's headless Chromium driven
by Playwright. Opens every page (a screenshot of each under
$SCREENSHOT_DIR, else the test's tmp dir), checks the chance lines and the
training-loss chart are drawn, approves a proposal through the UI, watches
Home's phase label while a real worker trains and evaluates to the end (a
finished run shows no pending proposal), and opens the HTML report with the
network cut off."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest_dashboard import copy_db

from backend.report import write_report
from backend.store import Store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent
# capabilities first: a first visit straight to a page (not /) must still go
# through app.py (sidebar, selected run); see pages/_common.leave_pages_folder_mode
PAGES = {"capabilities": "capabilities", "home": "", "training": "training", "mixture": "mixture",
         "compare": "compare", "schedules": "schedules", "new_run": "new_run"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(human_run, tmp_path, refresh_s: str):
    """`streamlit run app.py` on a free port over a copy of the run's DB,
    live pages refreshing every `refresh_s` seconds."""
    db, run_id = human_run
    db = copy_db(db, tmp_path / "cl.db")
    port = free_port()
    env = {**os.environ, "CLOSED_LOOP_DB": str(db), "CLOSED_LOOP_REFRESH_S": refresh_s}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        # address, headless, usage statistics and toolbar come from .streamlit/config.toml
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text())
            time.sleep(0.3)
        yield url, Store(db), run_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def served(human_run, tmp_path):
    """The dashboard served over a copy of the human-policy run."""
    yield from serve(human_run, tmp_path, "2")


@pytest.fixture
def served_live(human_run, tmp_path):
    """The same, its live pages refreshing every 0.3 s: on quiet cores the
    resumed tiny run trains its last 10 steps in about a second."""
    yield from serve(human_run, tmp_path, "0.3")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: $SCREENSHOT_DIR (CI keeps it as an artifact), else the test's tmp dir."""
    out = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def figures(page) -> list[dict]:
    """Every plotly figure on the page as {title, traces: [{name, points}]}
    (from plotly's own graph divs, so only what was drawn; _fullData holds
    the arrays decoded from their base64 form)."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(g => ({
        title: (g.layout && g.layout.title && g.layout.title.text) || '',
        traces: (g._fullData || []).map(t => ({name: t.name || '', points: t.y ? t.y.length : 0}))}))""")


def settle(page, heading: str) -> None:
    """Wait until the page shows `heading` and its script run is over."""
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=30_000)
    page.wait_for_timeout(300)  # let plotly draw


def test_pages_render_and_a_proposal_is_approved_in_the_browser(served, browser, shots):
    url, store, run_id = served
    (p,) = store.proposals(run_id, status="pending")
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # .streamlit/config.toml: no usage statistics, no fonts or icons from a CDN
    external: list[str] = []
    page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://"),
               lambda route: (external.append(route.request.url), route.abort()))

    headings = {"home": f"Run #{run_id}", "capabilities": "Capabilities", "training": "Training",
                "mixture": "Mixture & proposals", "compare": "Compare runs", "schedules": "Schedules",
                "new_run": "New run"}
    for name, path in PAGES.items():
        page.goto(f"{url}/{path}")
        settle(page, headings[name])
        assert not page.locator("[data-testid='stException']").count(), name
        if name in ("home", "capabilities", "training", "mixture"):
            page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=15_000)
        if name != "new_run":
            page.get_by_text("Your name (kept with each decision)").first.wait_for(timeout=10_000)  # sidebar
        if name == "capabilities":  # each skill's panel draws its chance level
            chance = [t for f in figures(page) for t in f["traces"] if t["name"].endswith(" chance")]
            assert {t["name"] for t in chance} == {"copy chance", "add2 chance"} and all(t["points"] == 2 for t in chance)
        if name == "training":
            (loss,) = [f for f in figures(page) if re.search(r"\bTraining loss\b", f["title"])]  # Streamlit bolds titles
            assert loss["traces"] and all(t["points"] == 20 for t in loss["traces"])  # steps 1..20, logged and EMA
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert all((shots / f"{n}.png").stat().st_size > 10_000 for n in PAGES)

    # approve through the UI, under a name typed into the sidebar
    page.goto(f"{url}/mixture")
    settle(page, "Mixture & proposals")
    name = page.get_by_label("Your name (kept with each decision)")
    name.fill("browser-test")
    name.press("Enter")
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
    page.get_by_role("button", name="Approve").click()
    page.get_by_text(f"Proposal #{p['id']} approved").wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "approved.png"), full_page=True)
    now = store.proposal(p["id"])
    assert now["status"] == "approved" and now["decided_by"] == "browser-test"
    assert not errors, errors
    assert not external, sorted(set(external))
    assert not page.get_by_role("button", name="Deploy").count()  # client.toolbarMode


def test_the_phase_moves_while_a_worker_trains_then_a_finished_run_waits_for_nothing(served_live, browser, shots):
    """The stopped run resumes in a real worker (steps 20 to 30, then the last
    checkpoint's evaluation): Home's phase label follows it, and once it has
    finished no proposal waits (its open one expired)."""
    from backend import worker

    url, store, run_id = served_live
    assert store.proposals(run_id, status="pending")
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    worker.spawn(store.path, run_id)  # the run is live from here on: Home polls it
    page.goto(url)
    settle(page, f"Run #{run_id}")
    phases: list[str] = []
    captions = page.locator("[data-testid='stCaptionContainer']")
    deadline = time.time() + 240
    while store.run(run_id)["status"] in ("running", "created") and time.time() < deadline:
        for text in captions.all_inner_texts():
            label = re.match(r"Phase: (.+?)(?: for \d+ s)? ·", text)
            if label and (not phases or phases[-1] != label.group(1)):
                phases.append(label.group(1))
                if label.group(1).startswith("evaluating") and not (shots / "evaluating.png").exists():
                    page.screenshot(path=str(shots / "evaluating.png"), full_page=True)
        page.wait_for_timeout(100)
    run = store.run(run_id)
    assert run["status"] == "finished", (run["status"], run["error"], phases)
    assert "training" in phases and phases[-1] != "training", phases  # it trained, then moved on
    assert any(p.startswith("evaluating") for p in phases[phases.index("training"):]), phases
    page.reload()
    settle(page, f"Run #{run_id}")
    page.get_by_text("no pending proposal").first.wait_for(timeout=15_000)
    assert not page.get_by_text("waiting for you").count()
    assert page.get_by_text(re.compile(r"^finished · \d+ s of training in all")).count()
    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=15_000)
    settle(page, f"Run #{run_id}")
    page.screenshot(path=str(shots / "finished.png"), full_page=True)
    assert store.proposals(run_id, status="pending") == []
    page.goto(f"{url}/mixture")
    settle(page, "Mixture & proposals")
    page.get_by_text("No proposal is waiting").first.wait_for(timeout=15_000)


def test_html_report_opens_without_network(human_run, browser, tmp_path):
    db, run_id = human_run
    path = write_report(Store(db), run_id, tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    requests: list[str] = []
    page.route("http*://**", lambda route: (requests.append(route.request.url), route.abort()))
    page.goto(path.as_uri())
    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=15_000)
    assert page.locator(".js-plotly-plot").count() == 5
    assert page.get_by_role("heading", name="Decisions").count() == 1
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert requests == []
