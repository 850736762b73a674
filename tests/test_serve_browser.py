"""The chat page in a real browser: headless Chromium (Debian's package) driven by Selenium loads
the page from a live `gptcore serve`, sends a message and watches the reply stream in."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support_serve import endless_model, get, greedy, running, wait_for

from gptcore.serve.server import render_chat

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a headless browser and a server
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no headless browser here: `apt-get install chromium chromium-driver` (.ci/run does) to test the page",
    ),
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return endless_model(tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def page(model_path: Path) -> Iterator[tuple[object, str]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gptcore-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1000,700",
    ):
        options.add_argument(flag)
    with running(model_path, max_tokens_limit=100_000) as url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(url + "/")
            yield driver, url
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


def replies(driver) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", ".msg.assistant")]


def send(driver, text: str, temperature: str, max_tokens: str) -> None:
    for field, value in (("temperature", temperature), ("max-tokens", max_tokens)):
        box = driver.find_element("id", field)
        box.clear()
        box.send_keys(value)
    driver.find_element("id", "input").send_keys(text)
    driver.find_element("id", "send").click()


def test_page_streams_a_reply_and_keeps_the_conversation(page, model_path: Path) -> None:
    driver, _ = page
    wait_for(lambda: "tiny" in driver.find_element("id", "model").text, "the page to find the model")
    # count the changes to the conversation's text: the reply is drawn piece by piece
    driver.execute_script(
        "window.updates = 0; new MutationObserver((records) => window.updates += records.length)"
        ".observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true});"
    )
    send(driver, "ROMEO:", "0", "30")
    wait_for(lambda: driver.find_elements("css selector", ".msg.assistant[data-done]"), "the reply to end")
    first = greedy(model_path, "ROMEO:", 30)
    assert replies(driver) == [first]
    assert driver.execute_script("return window.updates") > 10  # 30 tokens came in pieces
    # the second message is answered in the context of the first exchange
    send(driver, "JULIET:", "0", "12")
    wait_for(
        lambda: len(driver.find_elements("css selector", ".msg.assistant[data-done]")) == 2, "a second reply"
    )
    prompt = render_chat([("user", "ROMEO:"), ("assistant", first), ("user", "JULIET:")])
    assert replies(driver)[1] == greedy(model_path, prompt, 12)


def test_stop_ends_a_reply_and_reset_clears_the_page(page) -> None:
    driver, url = page
    driver.find_element("id", "reset").click()
    assert replies(driver) == []
    send(driver, "ROMEO:", "1", "100000")  # would take minutes
    # the reply shows while it is still being generated: tokens appear as they arrive
    wait_for(lambda: len(replies(driver)) == 1 and len(replies(driver)[0]) > 5, "the reply to start")
    assert driver.find_elements("css selector", ".msg.assistant[data-streaming]")
    driver.find_element("id", "stop").click()
    wait_for(lambda: driver.find_elements("css selector", ".msg.assistant[data-done]"), "the reply to stop")
    assert "[stopped]" in driver.find_element("id", "log").text
    # the server stopped generating it when the page dropped the connection
    wait_for(lambda: get(url, "/health")[1]["requests"] == 0, "the server to drop the reply")
    assert driver.find_element("id", "send").is_enabled()
    driver.find_element("id", "reset").click()
    assert replies(driver) == [] and "[conversation cleared]" in driver.find_element("id", "log").text
