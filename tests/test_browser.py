"""`mmdisco app` and `mmdisco study` served on loopback and driven by headless Chromium.

Debian's ``chromium`` and ``chromium-driver`` (scripts/setup.sh installs them as root),
through Selenium. Each test starts its server as a subprocess on a free 127.0.0.1 port, checks
that both players load media whose picture and sound decode, and stops the server itself;
the study's server is killed with SIGKILL and the votes must be in its database. Screenshots
go to outputs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmdisco.cli import app

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MMDISCO = str(Path(sys.executable).with_name("mmdisco"))
SCREENSHOTS = Path(__file__).resolve().parents[1] / "outputs" / "screenshots"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them "
        "when run as root)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], url: str, log: Path, timeout: float = 180.0) -> Iterator:
    """Run ``mmdisco ARGS`` until ``url`` answers; stop it (and its children) on exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [MMDISCO, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mmdisco {args[0]} exited:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (a 403 without a token is an answer)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not answer:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1300",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        # Nothing leaves this machine: every host but loopback fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 120.0, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, f"timed out waiting for {what}")


PLAYS = """
const [selector, done] = [arguments[0], arguments[arguments.length - 1]];
const v = document.querySelector(selector);
const report = () => done({ready: v.readyState, error: v.error && v.error.code,
  duration: v.duration, width: v.videoWidth, time: v.currentTime,
  frames: v.webkitDecodedFrameCount, audio: v.webkitAudioDecodedByteCount});
v.muted = true;
v.play().then(() => setTimeout(() => { v.pause(); report(); }, 700), report);
"""


def assert_plays(driver, selector: str, width: int, seconds: float = 2.0) -> None:
    """The player has the clip, and its picture and sound decode while it plays."""
    wait_for(
        driver,
        lambda d: d.execute_script(f"return document.querySelector('{selector}').readyState") >= 2,
        60,
        f"{selector} to load",
    )
    state = driver.execute_async_script(PLAYS, selector)
    assert state["error"] is None, state
    assert state["duration"] == pytest.approx(seconds, abs=0.1), state
    assert state["width"] == width and state["time"] > 0.2, state
    assert state["frames"] > 0 and state["audio"] > 0, state  # both tracks decoded


def screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_app_generates_and_plays_both_clips(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    args = ["app", "--port", str(port), "--out", str(tmp_path / "clips")]
    with serving(args, url, tmp_path / "app.log"):
        browser.get(url)
        wait_for(browser, lambda d: d.find_elements(By.ID, "generate"), 60, "the app")
        intro = browser.find_element(By.ID, "intro")
        assert "square bounces" in intro.text and "t/T" in intro.text
        docs = intro.find_element(By.LINK_TEXT, "the app and the study").get_attribute("href")
        with urllib.request.urlopen(docs) as page:
            assert b"# The web demo and the A/B listening study" in page.read()

        def set_number(elem_id: str, value: str) -> None:
            box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(value, Keys.TAB)

        def status() -> str:
            return browser.find_element(By.ID, "status").text

        def badge(side: str) -> str:
            return browser.find_element(By.ID, f"{side}_badge").text

        # The default seed is the first example: the badges show what guidance fixes.
        assert browser.find_element(By.CSS_SELECTOR, "#seed input").get_attribute("value") == "1"
        # Long enough for the sampler's progress to show, in one place only.
        set_number("steps", "150")
        set_number("seed", "4")
        browser.find_element(By.ID, "generate").click()

        def progress_shown(driver) -> list[str]:
            trackers = driver.find_elements(By.CSS_SELECTOR, "[data-testid=status-tracker]")
            texts = [e.text for e in trackers]
            return [t for t in texts if "/150 steps" in t]

        assert len(wait_for(browser, progress_shown, 60, "the progress of sampling")) == 1
        wait_for(browser, lambda d: status() == "seed 4", 180, "the generation")
        for side in ("unguided", "guided"):
            assert_plays(browser, f"#{side} video", width=128)
            rendering = browser.execute_script(
                f"return getComputedStyle(document.querySelector('#{side} video')).imageRendering"
            )
            assert rendering == "pixelated"
            assert re.fullmatch(r"classes (agree|differ), events aligned [0-2]/2", badge(side))
            verdict = browser.find_element(By.CSS_SELECTOR, f"#{side}_verdict textarea")
            lines = verdict.get_attribute("value").splitlines()
            assert lines[0].startswith("video: ") and lines[1].startswith("audio: "), lines
        screenshot(browser, "app.png")
        shown = browser.find_element(By.CSS_SELECTOR, "#guided video").get_attribute("src")

        # A bad value: a message naming the field, no traceback, the results stay.
        set_number("steps", "-3")
        browser.find_element(By.ID, "generate").click()
        wait_for(browser, lambda d: "Cannot generate" in status(), 60, "the error message")
        assert "steps: must be a whole number >= 1, got -3" in status()
        assert "Traceback" not in browser.page_source
        assert browser.find_element(By.CSS_SELECTOR, "#guided video").get_attribute("src") == shown
        assert badge("guided")
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [
        "seed4-run1-guided.mp4",
        "seed4-run1-unguided.mp4",
    ]
    log = (tmp_path / "app.log").read_text()
    assert f"serving on http://127.0.0.1:{port}" in log and "share=True" not in log


PLAY_TO_END = """
const [selector, done] = [arguments[0], arguments[arguments.length - 1]];
const v = document.querySelector(selector);
v.muted = true;
v.addEventListener("ended", () => done(true), {once: true});
v.currentTime = Math.max(0, v.duration - 0.3);  // the last moments: the page sees "ended"
v.play().catch((err) => done(String(err)));
"""


def test_study_votes_survive_a_killed_server(browser, tmp_path):
    from selenium.webdriver.common.by import By

    db = tmp_path / "study.sqlite"
    args = ["study", "create", "--db", str(db), "--pipeline", "world", "--num-pairs", "3"]
    result = CliRunner().invoke(app, [*args, "--quality", "--listeners", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with sqlite3.connect(db) as conn:
        (token,) = conn.execute("SELECT token FROM listeners WHERE id = 1").fetchone()
        sides = conn.execute("SELECT left_system FROM trials WHERE listener = 1 ORDER BY position")
        sides = [row[0] for row in sides]
    assert result.stdout.splitlines()[0] == f"listener-001: http://127.0.0.1:8000/?token={token}"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["study", "serve", "--db", str(db), "--port", str(port)]
    with serving(args, base + "/", tmp_path / "study.log") as server:
        # A bad token: a page in the study's style, and no request for an icon.
        browser.get(f"{base}/?token=not-invited")
        message = browser.find_element(By.ID, "message")
        assert "by invitation" in message.text
        assert message.value_of_css_property("border-left-style") == "solid"
        icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
        assert icon == "data:,"
        screenshot(browser, "study-refused.png")

        def progress() -> str:
            return browser.find_element(By.ID, "progress").text

        def hint() -> str:
            return browser.find_element(By.ID, "hint").text

        def submit_enabled() -> bool:
            return browser.find_element(By.ID, "submit").is_enabled()

        def answer(vote: dict[str, str]) -> None:
            """Choose the answers, play both clips to the end (required), submit."""
            for question, choice in vote.items():
                browser.find_element(By.ID, f"q-{question}-{choice}").click()
            assert not submit_enabled() and hint() == "Play Clip 1 and Clip 2 to the end to answer."
            assert browser.execute_async_script(PLAY_TO_END, "#left") is True
            wait_for(browser, lambda d: hint() == "Play Clip 2 to the end to answer.", 10)
            assert not submit_enabled()
            assert browser.execute_async_script(PLAY_TO_END, "#right") is True
            wait_for(browser, lambda d: submit_enabled() and not hint(), 10, "the button")
            browser.find_element(By.ID, "submit").click()

        browser.get(f"{base}/?token={token}")
        stale_tab = browser.current_window_handle
        wait_for(browser, lambda d: progress() == "Pair 1 of 3.", 60, "the first pair")
        assert_plays(browser, "#left", width=128)
        assert_plays(browser, "#right", width=128)
        assert "guided" not in browser.page_source  # blind: no system names, no file names
        screenshot(browser, "study.png")

        votes = [
            {"alignment": "right", "quality": "left"},
            {"alignment": "left", "quality": "none"},
        ]
        answer(votes[0])
        wait_for(browser, lambda d: progress() == "Pair 2 of 3.", 30, "the second pair")
        # A second tab answers pair 2; the first, still showing pair 2, answers it too.
        browser.switch_to.new_window("tab")
        browser.get(f"{base}/?token={token}")
        wait_for(browser, lambda d: progress() == "Pair 2 of 3.", 30, "pair 2 in a new tab")
        answer(votes[1])
        wait_for(browser, lambda d: progress() == "Pair 3 of 3.", 30, "the third pair")
        browser.close()
        browser.switch_to.window(stale_tab)
        answer({"alignment": "none", "quality": "none"})
        wait_for(browser, lambda d: progress() == "Pair 3 of 3.", 30, "the stale tab to move on")
        message = browser.find_element(By.CSS_SELECTOR, ".submit-row #message")
        assert message.is_displayed()
        assert message.text == (
            "You have already answered this pair (in another tab?): here is your next "
            "unanswered pair."
        )
        screenshot(browser, "study-stale-tab.png")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = conn.execute(
            """SELECT t.position, a.question, a.choice, a.winner FROM answers a
               JOIN trials t ON t.listener = a.listener AND t.pair = a.pair
               ORDER BY t.position, a.question"""
        ).fetchall()
    expected = []
    for position, vote in enumerate(votes):
        other = "b" if sides[position] == "a" else "a"
        winner = {"left": sides[position], "right": other, "none": None}
        expected += [(position, q, c, winner[c]) for q, c in sorted(vote.items())]
    assert stored == expected

    answers = tmp_path / "answers.csv"
    result = CliRunner().invoke(app, ["study", "export", "--db", str(db), "--csv", str(answers)])
    assert result.exit_code == 0, result.output
    rows = answers.read_text().splitlines()[1:]
    assert len(rows) == len(stored) == 4
    assert "1 of 2 invited listeners answered" in result.stdout
