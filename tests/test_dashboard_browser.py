"""The dashboard in a real browser: headless Chromium (Debian's package, driven by Playwright) logs in,
sees the overview's plots drawn, opens an episode, rolls a version back and sees the active version
change, and the server then serves the parent; then switches the scenario selector and sees the
other scenario's lineage, its gate's task families and probe, and its overview; there a live canary's
panel, with its statistics drawn against the boundary, and aborts it.

Screenshots of each page go to a temporary folder, or to the folder `R3_SCREENSHOTS_DIR` names
(`R3_SCREENSHOTS_DIR=docs` refreshes the README's).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from dashboard_support import OTHER, OTHER_NAMES, made_up_episodes, served_store, write_episodes
from support import make_lora

from r3.store.store import open_store

pytestmark = pytest.mark.browser  # the suite's tiers: tests/conftest.py

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no browser: Debian's chromium is not installed at {CHROMIUM} "
                "(`apt-get install chromium`; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")

ADMIN_KEY = "browser-admin-key"
# Without the background-networking flags Chromium's own connections hang on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def stack(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    with served_store(model_path, tmp_path_factory, 900, span_s=20 * 3600, admin_key=ADMIN_KEY) as served:
        yield served


@pytest.fixture(scope="module")
def page(stack) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        opened = context.new_page()
        opened.problems = []  # console errors (a Content-Security-Policy violation is one) and uncaught exceptions
        opened.on("console", lambda m: m.type == "error" and opened.problems.append(m.text))
        opened.on("pageerror", lambda e: opened.problems.append(str(e)))
        try:
            yield opened
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("R3_SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def drawn_pixels(page: sync_api.Page, selector: str) -> list[int]:
    """For each canvas matching `selector`, how many of its pixels are painted."""
    return page.eval_on_selector_all(selector, """canvases => canvases.map(canvas => {
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
        return painted;
    })""")


def test_an_operator_logs_in_reads_the_overview_opens_an_episode_and_rolls_back(stack, page, shots: Path,
                                                                               model_path: Path, tmp_path: Path) -> None:
    app, url, (parent, child, _) = stack

    page.goto(f"{url}/dashboard")
    assert page.url.endswith("/dashboard/login")
    page.fill("input[name=key]", ADMIN_KEY)
    page.screenshot(path=shots / "dashboard-login.png")
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{url}/dashboard")

    # Overview: the six plots (each pass rate beside its mean score) are drawn (pixels on every
    # canvas), the active version is the child.
    page.wait_for_selector("canvas[data-drawn=true]")
    assert page.locator("canvas[data-plot]").count() == 6
    assert all(n > 1000 for n in drawn_pixels(page, "canvas[data-plot]")), drawn_pixels(page, "canvas[data-plot]")
    assert page.inner_text("#active-version") == child
    page.screenshot(path=shots / "dashboard-overview.png", full_page=True)

    # Training rounds, each with its reward plot.
    page.click("nav >> text=Training rounds")
    page.wait_for_selector("canvas[data-drawn=true]")
    assert all(n > 500 for n in drawn_pixels(page, "canvas[data-plot]"))
    page.screenshot(path=shots / "dashboard-training.png", full_page=True)

    # Episodes: filter the failures, open one: the task, the failed attempt, the reflection, the retry.
    page.click("nav >> text=Episodes")
    page.select_option("select[name=outcome]", "fail")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**/dashboard/episodes?**outcome=fail**")
    page.screenshot(path=shots / "dashboard-episodes.png")
    page.click("table.episodes a >> nth=0")
    page.wait_for_selector("#attempt-2")
    assert page.inner_text("#outcome") == "fail"
    assert "multiply them" in page.inner_text("#reflection-1")
    assert "fail" in page.inner_text("#attempt-1 .verdict")
    page.screenshot(path=shots / "dashboard-episode.png", full_page=True)

    # Versions: roll back (confirming the dialog); the page shows the parent active, and the server serves it.
    page.click("nav >> text=Versions")
    page.screenshot(path=shots / "dashboard-versions.png", full_page=True)
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.click("#rollback")
    page.wait_for_selector(f"#active-version:text-is('{parent}')")
    assert dialogs and f"Roll back from {child} to {parent}" in dialogs[0]
    assert page.inner_text("#serving-version") == parent
    assert f"Rolled back: {parent} is active" in page.inner_text("p.notice")
    answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    assert answer.status_code == 200 and answer.json()["r3"]["adapter"] == parent

    # The scenario selector: choosing the other scenario shows its lineage (the default one's is gone),
    # with the family that refused its second version highlighted, and the pages stay in it.
    assert page.input_value("#scenario") == "default"
    page.select_option("#scenario", OTHER)  # sent on change, no button to press
    page.wait_for_url(f"**/dashboard/versions?scenario={OTHER}")
    assert page.inner_text("#active-version") == OTHER_NAMES[0]
    assert [page.get_attribute(row, "id") for row in ("tr[id^=version-] >> nth=0", "tr[id^=version-] >> nth=1")] \
        == [f"version-{name}" for name in OTHER_NAMES]
    assert page.locator(f"#version-{parent}").count() == 0
    refused = page.locator(f"#family-{OTHER_NAMES[1]}-sql_exec")
    assert "refused" in refused.inner_text() and refused.get_attribute("class") == "refused"
    assert page.locator(f"#probe-{OTHER_NAMES[1]}.refused").is_visible()
    page.screenshot(path=shots / "dashboard-versions-scenario.png", full_page=True)
    page.click("nav >> text=Overview")
    page.wait_for_url(f"**/dashboard?scenario={OTHER}")
    assert page.inner_text("#active-version") == OTHER_NAMES[0] and page.input_value("#scenario") == OTHER

    # A live canary in that scenario: its panel on the overview, the test's statistics drawn as bars
    # against the boundary; "Abort now" (confirmed) rejects it and the active version stays.
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        canary = pool.submit(asyncio.run, _start_canary(app.state.settings, model_path, tmp_path)).result()
    page.reload()
    page.wait_for_selector("#canary canvas[data-drawn=true]")
    assert page.inner_text("#canary-version") == canary and page.inner_text("#canary-state") == "running"
    assert drawn_pixels(page, "#canary canvas")[0] > 1000
    page.locator("#canary").screenshot(path=shots / "dashboard-canary.png")
    dialogs.clear()
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.click("#canary-abort")
    page.wait_for_selector("#canary-state:text-is('aborted')")
    assert dialogs and f"Abort the canary {canary} now" in dialogs[0]
    assert f"Canary {canary} aborted: {OTHER_NAMES[0]} stays active" in page.inner_text("p.notice")
    assert page.inner_text("#active-version") == OTHER_NAMES[0]

    assert not page.problems, page.problems


async def _start_canary(settings, model_path: Path, tmp_path: Path) -> str:
    """A candidate of the scenario OTHER as its running canary on a quarter of the traffic, with 200 of
    its episodes since (a quarter on the canary's side); its name."""
    async with open_store(settings) as store:
        candidate = await store.registry.register(make_lora(model_path, tmp_path / "canary", seed=9), OTHER_NAMES[0],
                                                  {}, [], scenario=OTHER)
        await store.canaries.start(candidate.name, 0.25)
        # Its first attempts pass 70% of the time (the made-up versions' 50% to 90%), the current one's 50%:
        # bars the chart shows, far from the boundary (the server's own watch may run the test meanwhile).
        now = time.time()
        current = made_up_episodes(150, [OTHER_NAMES[0]], now, now + 1, seed=5)
        canary = made_up_episodes(50, [candidate.name] * 5, now, now + 1, seed=6)
        for episode in [*current, *canary]:
            episode.scenario, episode.canary = OTHER, episode.adapter == candidate.name
        await write_episodes(store.episodes, [*current, *canary])
        return candidate.name
