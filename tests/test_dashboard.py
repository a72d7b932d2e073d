"""The operator's dashboard over HTTP, against a real server and store: login and its cookie, CSRF on
every action, each page's numbers, activation, rollback, training requests, episode filters and
pages, the overview's speed with ten thousand episodes; each page per scenario (its selector, each
scenario's data under it alone, actions on the scenario selected, an unknown one a 404 page), the
gate's task families and probe; the live canary's panel (its numbers, exactly as the test works
them from the episodes written, and its promote and abort buttons, on a scripted server of its
own); and the Prometheus and Grafana files of the production stack. (tests/test_dashboard_browser.py
drives the same pages in Chromium.)"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from dashboard_support import (GATE, OTHER, OTHER_EPISODES, OTHER_NAMES, made_up_episodes, served_store,
                               write_episodes)
from support import ScriptedEngine, ThreadedServer

from r3.canary import Arm, CanaryCounts, CanaryDecision, CanaryPolicy, Comparison, decide
from r3.episodes import ABANDONED, AttemptRecord, Episode, Feedback, new_episode_id
from r3.settings import Settings
from r3.store.live_stats import VersionStats, version_stats
from r3.store.models import VersionStatus
from r3.store.registry import Version
from r3.store.store import open_store
from server.app import create_app
from server.dashboard.charts import WINDOWS, fitting_window, overview_charts
from server.dashboard.lineage import GateNumbers, Rate, lineage
from server.metrics import Metrics
from r3.store.timeline import TimelinePoint

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "dashboard-admin-key"
SEEDED = 120


@pytest.fixture(scope="module")
def stack(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """(app, url, [parent, child, rejected]): see `dashboard_support.served_store`; SEEDED episodes over the
    last 50 minutes."""
    with served_store(model_path, tmp_path_factory, SEEDED, span_s=3000, admin_key=ADMIN_KEY) as served:
        yield served


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def logged_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    form = client.get("/dashboard/login")
    answer = client.post("/dashboard/login", data={"key": ADMIN_KEY, "csrf": csrf_of(form.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    return client


@pytest.fixture
def browser(stack) -> httpx.Client:
    with closing(logged_in(stack[1])) as client:
        yield client


# ------------------------------------------------------------------ login, session, CSRF


def test_login_sets_a_signed_http_only_strict_cookie_and_wrong_keys_are_refused(stack) -> None:
    _, url, _ = stack
    with httpx.Client(base_url=url) as client:
        form = client.get("/dashboard/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        token = csrf_of(form.text)
        wrong = client.post("/dashboard/login", data={"key": "not-the-key", "csrf": token})
        assert wrong.status_code == 401 and "not the admin key" in wrong.text
        assert "r3_dashboard" not in client.cookies

        answer = client.post("/dashboard/login", data={"key": ADMIN_KEY, "csrf": csrf_of(wrong.text)})
        assert answer.status_code == 303
        cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith("r3_dashboard="))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in cookie.lower()
        assert "secure" not in attributes  # plain http: a Secure cookie would never come back
        assert ADMIN_KEY not in cookie
        assert client.get("/dashboard").status_code == 200


def test_login_form_needs_its_own_token(stack) -> None:
    _, url, _ = stack
    with httpx.Client(base_url=url) as client:  # no login cookie: a form posted from elsewhere
        answer = client.post("/dashboard/login", data={"key": ADMIN_KEY, "csrf": "made-up"})
        assert answer.status_code == 403 and "r3_dashboard" not in client.cookies


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/versions", "/dashboard/training", "/dashboard/episodes",
                                  "/dashboard/episodes/ep_x"])
def test_pages_send_a_stranger_to_the_login_form(stack, path: str) -> None:
    answer = httpx.get(f"{stack[1]}{path}")
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"


def test_forged_or_expired_cookies_are_no_session(stack) -> None:
    _, url, _ = stack
    forged = httpx.get(f"{url}/dashboard", cookies={"r3_dashboard": "eyJjc3JmIjoieCJ9.forged.sig"})
    assert forged.status_code == 303
    with closing(logged_in(url)) as client:  # the same cookie under another admin key is worthless
        cookie = client.cookies["r3_dashboard"]
    app = stack[0]
    original = app.state.auth.admin_key
    app.state.auth.admin_key = "rotated-key"
    try:
        assert httpx.get(f"{url}/dashboard", cookies={"r3_dashboard": cookie}).status_code == 303
    finally:
        app.state.auth.admin_key = original


def test_without_an_admin_key_the_dashboard_is_off(stack) -> None:
    app, url, _ = stack
    original = app.state.auth.admin_key
    app.state.auth.admin_key = None
    try:
        form = httpx.get(f"{url}/dashboard/login")
        assert form.status_code == 403 and "The dashboard is off" in form.text
        assert httpx.post(f"{url}/dashboard/login", data={"key": "", "csrf": ""}).status_code == 403
        assert httpx.get(f"{url}/dashboard").status_code == 303
    finally:
        app.state.auth.admin_key = original


@pytest.mark.parametrize("action", ["/dashboard/versions/rollback", "/dashboard/versions/base/activate",
                                    "/dashboard/training", "/dashboard/canary/promote", "/dashboard/canary/abort",
                                    "/dashboard/logout"])
def test_every_action_needs_the_session_and_its_csrf_token(stack, browser: httpx.Client, action: str) -> None:
    app, url, _ = stack
    before = _active_name(app)
    assert httpx.post(f"{url}{action}", data={"csrf": "x"}).status_code == 303  # no session: to the login form
    assert browser.post(action).status_code == 403  # a session, but no token
    assert browser.post(action, data={"csrf": "not-this-sessions-token"}).status_code == 403
    assert _active_name(app) == before
    assert browser.get("/dashboard").status_code == 200  # still logged in


def test_logout_ends_the_session(stack) -> None:
    _, url, _ = stack
    with closing(logged_in(url)) as client, closing(logged_in(url)) as elsewhere:
        copied = client.cookies["r3_dashboard"]
        token = csrf_of(client.get("/dashboard").text)
        assert client.post("/dashboard/logout", data={"csrf": token}).status_code == 303
        assert client.get("/dashboard").status_code == 303
        # Ended on the server, not only in this browser: a copy of the cookie is worth nothing now,
        # and neither is the admin's session in another browser (a logout is a "not before").
        assert httpx.get(f"{url}/dashboard", cookies={"r3_dashboard": copied}).status_code == 303
        stolen = httpx.post(f"{url}/dashboard/training", cookies={"r3_dashboard": copied}, data={"csrf": token})
        assert stolen.status_code == 303 and stolen.headers["location"] == "/dashboard/login"
        assert elsewhere.get("/dashboard").status_code == 303
    with closing(logged_in(url)) as again:  # logging in again starts a new session
        assert again.get("/dashboard").status_code == 200
        assert "logged out of the dashboard" in again.get("/dashboard/versions").text  # in the audit log


# ------------------------------------------------------------------ pages


def test_overview_shows_the_active_version_backlog_trainer_and_plots(stack, browser: httpx.Client) -> None:
    _, _, versions = stack
    page = browser.get("/dashboard", params={"window": "1h"})
    assert page.status_code == 200
    assert f'id="active-version">{versions[1]}<' in page.text
    plots = {p["id"]: p for p in map(json.loads, re.findall(
        r'<script type="application/json" id="plot-[^"]+">(.*?)</script>', page.text, re.S))}
    assert set(plots) == {"requests", "first-attempt", "first-attempt-score", "rescues", "retry-score", "latency"}
    requests = plots["requests"]
    assert {d["label"] for d in requests["datasets"]} == {"base", *versions[:2]}
    assert sum(v or 0 for d in requests["datasets"] for v in d["data"]) >= SEEDED
    assert len(requests["labels"]) == WINDOWS["1h"].buckets
    assert "round 1 finished" in page.text.replace("\n", " ") or "last: round" in page.text
    assert "/dashboard/static/chart.umd.min.js" in page.text
    assert browser.get("/dashboard/static/chart.umd.min.js").text.startswith("/*!\n * Chart.js v4")


def test_overview_fits_its_window_to_a_young_install_and_names_the_trainer(stack, browser: httpx.Client) -> None:
    """The stack's episodes span 50 minutes: the overview opens on the 1h window, not a fixed 24h in which
    they would be a sliver; the trainer card says none runs beside this server (an embedded app)."""
    page = browser.get("/dashboard").text
    assert '<a href="/dashboard?scenario=default&amp;window=1h" aria-current="page">1h</a>' in page
    assert "no trainer runs beside this server (R3_TRAINER=off)" in page
    assert 'aria-current="page">24h<' in browser.get("/dashboard", params={"window": "24h"}).text


def test_an_abandoned_episode_is_called_abandoned(stack, browser: httpx.Client) -> None:
    """Its client hung up before the answer was ready: never judged, but not "not judged" either."""
    app, _, _ = stack
    (episode,) = made_up_episodes(1, [None], time.time() - 1, time.time(), seed=7)  # the newest: on page 1
    episode.attempts[-1].finish_reason, episode.attempts[-1].success = ABANDONED, None
    asyncio.run(_write_directly(app, [episode]))
    page = browser.get(f"/dashboard/episodes/{episode.id}").text
    assert 'id="outcome">abandoned<' in page and "not judged" not in page
    listed = browser.get("/dashboard/episodes").text
    row = re.search(rf'<tr class="outcome-abandoned">(?:(?!</tr>).)*{episode.id}', listed, re.S)
    assert row is not None


def _graded_episodes() -> list[Episode]:
    """Episodes of a version judged by a model (a graded verifier): a failure rescued, a first attempt
    the judge gave no verdict on, and a failure the client's graded feedback passed."""
    def attempt(number: int, success: bool | None, score: float | None, detail: str, calls: int = 0,
                tokens: tuple[int, int] = (0, 0), feedback: Feedback | None = None) -> AttemptRecord:
        return AttemptRecord(number=number, completion_id=f"chatcmpl-{new_episode_id()[3:]}", finish_reason="stop",
                             prompt_tokens=20, completion_tokens=6, latency_s=0.4, content=f"answer {number}",
                             success=success, score=score, detail=detail, feedback=feedback, judge_calls=calls,
                             judge_prompt_tokens=tokens[0], judge_completion_tokens=tokens[1])

    return [Episode(id=new_episode_id(), tenant=None, model="m", adapter="r3-graded", task_kind="generic",
                    verifier={"type": "score_model", "name": "helpfulness"}, store_text=True,
                    messages=[{"role": "user", "content": "Explain LoRA in a sentence."}], tools=None,
                    tool_choice=None, attempts=attempts, revision=1) for attempts in (
        [attempt(1, False, 0.35, "too vague", 1, (150, 12)), attempt(2, True, 0.85, "clear", 1, (160, 10))],
        [attempt(1, None, None, "the judge model timed out after 2 tries", 2)],
        [attempt(1, False, 0.2, "too vague", feedback=Feedback(True, "good enough for us", score=0.7))],
    )]


def _cells(page: str, row: str) -> list[str]:
    """The text of each cell of the first table row with `row` in it, its whitespace collapsed."""
    found = re.search(rf"<tr\b(?:(?!</tr>).)*?{row}(?:(?!</tr>).)*</tr>", page, re.S)
    assert found, f"no row with {row}"
    return [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in re.findall(r"<td>(.*?)</td>", found.group(0), re.S)]


def test_scores_stand_beside_the_rates_and_unjudged_attempts_say_why(stack, browser: httpx.Client) -> None:
    app, _, _ = stack
    rescued, unjudged, overridden = episodes = _graded_episodes()
    asyncio.run(_write_directly(app, episodes))

    overview = browser.get("/dashboard", params={"window": "1h"}).text
    # requests, judged, unjudged, first-attempt success and mean score, retried, rescued, mean retry
    # score, success and mean score: the feedback's 0.7 stands for the verifier's 0.2.
    assert _cells(overview, 'id="totals-r3-graded"') == [
        "r3-graded", "3", "2", "1", "50.0%", "0.525", "1", "1 (100.0%)", "0.850", "100.0%", "0.775"]

    page = " ".join(browser.get(f"/dashboard/episodes/{rescued.id}").text.split())
    assert 'id="outcome">pass<' in page and 'id="score">0.850<' in page
    assert '<span class="score">score 0.350</span>' in page and '<span class="score">score 0.850</span>' in page
    assert "judged in 1 model call: 150 prompt + 12 completion tokens" in page

    page = " ".join(browser.get(f"/dashboard/episodes/{unjudged.id}").text.split())
    assert 'id="outcome">unjudged<' in page and 'id="score">—<' in page
    assert 'class="attempt verdict-unjudged"' in page and "score 0" not in page
    assert "unjudged, the verifier could give no verdict: the judge model timed out after 2 tries" in page
    assert "judged in 2 model calls: 0 prompt + 0 completion tokens" in page

    page = " ".join(browser.get(f"/dashboard/episodes/{overridden.id}").text.split())
    assert '<span class="verdict">fail</span> · <span class="score">score 0.200</span>' in page
    assert 'feedback: pass, <span class="feedback-score">score 0.700</span>' in page
    assert 'id="outcome">pass<' in page and 'id="score">0.700<' in page and "model call" not in page

    listed = browser.get("/dashboard/episodes", params={"version": "r3-graded"}).text
    for episode, first, outcome in ((rescued, "fail 0.350", "pass 0.850"), (unjudged, "unjudged", "unjudged"),
                                    (overridden, "pass 0.700", "pass 0.700")):
        assert _cells(listed, episode.id)[6:8] == [first, outcome], episode.id  # first attempt, outcome


def test_the_overview_window_holds_every_episode_since_the_first() -> None:
    now = datetime.now(UTC)
    assert fitting_window(None, now).name == "1h"
    assert fitting_window(now - timedelta(minutes=50), now).name == "1h"
    assert fitting_window(now - timedelta(hours=5), now).name == "6h"
    assert fitting_window(now - timedelta(days=2), now).name == "7d"
    assert fitting_window(now - timedelta(days=400), now).name == "30d"


def test_versions_page_shows_lineage_gate_intervals_live_numbers_and_audit(stack, browser: httpx.Client) -> None:
    _, _, (parent, child, rejected) = stack
    page = browser.get("/dashboard/versions").text
    assert page.index(f'id="version-{parent}"') < page.index(f'id="version-{child}"')
    assert "60.0% (12/20, 95% CI 38.7–78.1%)" in page  # the candidate's held-out rescues, Wilson interval
    assert "p = 0.0195" in page and "fell by 0.100 (more than 0.05)" in page
    assert page.index(f'id="version-{child}"') < page.index(f'id="version-{rejected}"')
    assert f'action="/dashboard/versions/{rejected}/activate?scenario=default"' in page  # any version can be activated
    assert f"Roll back to {parent}" in page
    assert "passed the evaluation gate" in page  # the audit log: the trainer's promotions
    # Live numbers: each rate beside its mean score, which for the made-up pass/fail episodes is the rate.
    live = " ".join(_cells(page, f'id="version-{parent}"'))
    rates = re.findall(r"(\d+\.\d)% \((\d\.\d{3})\)", live)  # first-attempt and final
    assert len(rates) == 2 and all(float(rate) == round(100 * float(score), 1) for rate, score in rates)
    assert re.search(r"\d+/\d+ \(\d\.\d{3}\)", live)  # rescued of retried, and their mean score


def test_activate_and_roll_back_from_the_dashboard(stack, browser: httpx.Client) -> None:
    app, _, (parent, child, _) = stack
    token = csrf_of(browser.get("/dashboard/versions").text)
    try:
        done = browser.post(f"/dashboard/versions/{parent}/activate", data={"csrf": token})
        assert done.status_code == 303 and done.headers["location"] == "/dashboard/versions?scenario=default"
        assert _active_name(app) == parent and app.state.adapters.active == parent
        page = browser.get("/dashboard/versions").text
        assert f"{parent} is active, this server serves {parent}." in page  # the one-shot notice
        assert "activated from the dashboard" in page
        assert "is active, this server serves" not in browser.get("/dashboard/versions").text  # shown once

        browser.post(f"/dashboard/versions/{child}/activate", data={"csrf": token})
        rolled = browser.post("/dashboard/versions/rollback", data={"csrf": token})
        assert rolled.status_code == 303 and _active_name(app) == parent
        assert f"rollback from {child}" in browser.get("/dashboard/versions").text

        missing = browser.post("/dashboard/versions/r3-v99/activate", data={"csrf": token})
        assert missing.status_code == 303
        assert "Activation refused: no complete adapter version named" in browser.get("/dashboard/versions").text
    finally:
        browser.post(f"/dashboard/versions/{child}/activate", data={"csrf": token})
    assert _active_name(app) == child


def test_training_page_shows_rounds_and_starts_one(stack, browser: httpx.Client) -> None:
    page = browser.get("/dashboard/training").text
    assert "0.25, 0.375, 0.5" in page and "7 of 18" in page and "r3-v3 rejected" in page
    assert 'id="round-plot-1"' in page
    started = browser.post("/dashboard/training", data={"csrf": csrf_of(page)})
    assert started.status_code == 303
    page = browser.get("/dashboard/training").text
    requested = re.search(r"Round (\d+) of scenario default requested", page)
    assert requested and "is requested." in page
    assert 'id="start-round" disabled' in page
    # A second click (another tab, a double submit) adds no round: it is told of the pending one.
    assert browser.post("/dashboard/training", data={"csrf": csrf_of(page)}).status_code == 303
    page = browser.get("/dashboard/training").text
    assert f"Round {requested.group(1)} is already requested; no other was requested." in page
    assert len(re.findall(r"Round \d+ · requested", page)) == 1


def test_episodes_filter_page_and_open(stack, browser: httpx.Client) -> None:
    _, _, (parent, _, _) = stack
    listed = browser.get("/dashboard/episodes", params={"outcome": "fail", "version": parent}).text
    rows = re.findall(r'<a href="/dashboard/episodes/(ep_[0-9a-f]+)\?scenario=default">', listed)
    assert rows and all(f"<td>{parent}</td>" in listed for _ in rows)
    assert 'class="outcome-pass"' not in listed

    first = browser.get("/dashboard/episodes")
    assert first.status_code == 200 and 'id="next-page"' in first.text  # SEEDED > one page
    next_href = re.search(r'<a href="\?([^"]+)" id="next-page">', first.text).group(1).replace("&amp;", "&")
    second = browser.get(f"/dashboard/episodes?{next_href}").text
    first_ids = set(re.findall(r"/dashboard/episodes/(ep_[0-9a-f]+)", first.text))
    second_ids = set(re.findall(r"/dashboard/episodes/(ep_[0-9a-f]+)", second))
    assert second_ids and not first_ids & second_ids

    bad_time = browser.get("/dashboard/episodes", params={"since": "yesterday"})
    assert bad_time.status_code == 200 and "is not a time" in bad_time.text
    bad_cursor = browser.get("/dashboard/episodes", params={"after": "garbage"})  # a page, not the API's JSON 400
    assert bad_cursor.status_code == 200 and bad_cursor.headers["content-type"].startswith("text/html")
    assert "not a page of this list" in bad_cursor.text and set(re.findall(
        r"/dashboard/episodes/(ep_[0-9a-f]+)", bad_cursor.text)) == first_ids

    rescued = next(e for e in rows)
    episode = browser.get(f"/dashboard/episodes/{rescued}").text
    assert "Using 2, 3 and 4 once each" in episode
    assert 'id="attempt-1"' in episode and 'id="reflection-1"' in episode and 'id="attempt-2"' in episode
    assert "the target needs their product" in episode and "2 + 3 + 4 = 9, not 24" in episode
    assert browser.get("/dashboard/episodes/ep_missing").status_code == 404


def test_overview_with_ten_thousand_episodes_counts_every_one(stack, browser: httpx.Client) -> None:
    """Aggregated in SQL, so thousands of episodes are one small page (its render time is measured in
    bench/dashboard.py, not asserted here)."""
    app, _, versions = stack
    now = time.time()
    before = _plotted_requests(browser)
    asyncio.run(_write_directly(app, made_up_episodes(10_000, [None, *versions[:2]], now - 20 * 3600, now, seed=1)))
    assert _plotted_requests(browser) == before + 10_000
    assert browser.get("/dashboard/episodes", params={"outcome": "fail"}).status_code == 200


def _plotted_requests(browser: httpx.Client) -> int:
    page = browser.get("/dashboard", params={"window": "24h"})
    assert page.status_code == 200
    plot = json.loads(re.search(r'<script type="application/json" id="plot-requests">(.*?)</script>', page.text,
                                re.S).group(1))
    return sum(v or 0 for d in plot["datasets"] for v in d["data"])

# ------------------------------------------------------------------ scenarios

PAGES = ["/dashboard", "/dashboard/versions", "/dashboard/training", "/dashboard/episodes"]


def _selector(page: str) -> tuple[list[str], str]:
    """(the header selector's scenarios, the one selected)."""
    form = re.search(r'<form method="get" action="[^"]*" class="scenario".*?</form>', page, re.S).group(0)
    options = re.findall(r'<option value="([^"]+)"( selected)?', form)
    return [name for name, _ in options], next(name for name, chosen in options if chosen)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_scenario_selector_and_its_links_keep_the_scenario(browser: httpx.Client,
                                                                             path: str) -> None:
    page = browser.get(path)
    assert page.status_code == 200 and _selector(page.text) == (["default", OTHER], "default")
    other = browser.get(path, params={"scenario": OTHER}).text
    assert _selector(other) == (["default", OTHER], OTHER)
    for section in PAGES:  # the navigation stays in the scenario
        assert f'href="{section}?scenario={OTHER}"' in other
    assert f'action="{path}"' in other  # the selector switches this page to another scenario


@pytest.mark.parametrize("path", [*PAGES, "/dashboard/episodes/ep_x"])
def test_an_unknown_scenario_is_a_404_page(browser: httpx.Client, path: str) -> None:
    page = browser.get(path, params={"scenario": "<nope>"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "There is no scenario &lt;nope&gt;." in page.text  # escaped, not markup
    assert _selector(page.text)[0] == ["default", OTHER]  # from where the operator can pick one


@pytest.mark.parametrize("action", ["/dashboard/versions/rollback", "/dashboard/versions/base/activate",
                                    "/dashboard/training", "/dashboard/canary/promote"])
def test_an_action_on_an_unknown_scenario_is_a_404_and_does_nothing(stack, browser: httpx.Client, action: str) -> None:
    app = stack[0]
    token = csrf_of(browser.get("/dashboard").text)
    before = (_active_name(app), _active_name(app, OTHER))
    answer = browser.post(action, params={"scenario": "nope"}, data={"csrf": token})
    assert answer.status_code == 404 and "There is no scenario" in answer.text
    assert (_active_name(app), _active_name(app, OTHER)) == before
    assert "nope" not in browser.get("/dashboard/training").text


def _plotted(page: str) -> dict[str, int]:
    """Requests per version in the overview's requests plot."""
    plot = json.loads(re.search(r'<script type="application/json" id="plot-requests">(.*?)</script>', page,
                                re.S).group(1))
    return {d["label"]: sum(v or 0 for v in d["data"]) for d in plot["datasets"]}


def test_the_overview_of_a_scenario_counts_its_episodes_alone(stack, browser: httpx.Client) -> None:
    app, _, (parent, child, _) = stack
    other = browser.get("/dashboard", params={"scenario": OTHER, "window": "24h"}).text
    assert f'id="active-version">{OTHER_NAMES[0]}<' in other and f'<code>model: "{OTHER}"</code>' in other
    plotted = _plotted(other)
    assert set(plotted) == {"base", OTHER_NAMES[0]} and sum(plotted.values()) == OTHER_EPISODES
    assert set(re.findall(r'<tr id="totals-([^"]+)">', other)) == {"base", OTHER_NAMES[0]}
    assert sum(int(_cells(other, f'id="totals-{v}"')[1]) for v in plotted) == OTHER_EPISODES
    assert f"{OTHER_NAMES[1]} rejected" in other  # its trainer card: its own last round

    default = browser.get("/dashboard", params={"window": "24h"}).text
    assert f'id="active-version">{child}<' in default and OTHER_NAMES[0] not in default
    # The two overviews split the episodes between them: each of them is counted once, in its scenario.
    everything = asyncio.run(_requests_since(app, WINDOWS["24h"].start(datetime.now(UTC))))
    assert sum(_plotted(default).values()) + OTHER_EPISODES == everything


def test_the_versions_page_of_a_scenario_shows_its_lineage_and_audit_alone(stack, browser: httpx.Client) -> None:
    _, _, (parent, child, rejected) = stack
    other = browser.get("/dashboard/versions", params={"scenario": OTHER}).text
    assert re.findall(r'<tr id="version-([^"]+)"', other) == OTHER_NAMES
    assert f'id="active-version">{OTHER_NAMES[0]}<' in other and "Roll back to base" in other
    assert f'action="/dashboard/versions/{OTHER_NAMES[1]}/activate?scenario={OTHER}"' in other
    assert f'action="/dashboard/versions/rollback?scenario={OTHER}"' in other
    assert "r3-v" not in other  # neither the default lineage nor its audit entries
    audit = other[other.index("Audit log"):]
    assert f"<td>{OTHER_NAMES[0]}</td>" in audit and "passed the evaluation gate" in audit

    default = browser.get("/dashboard/versions").text
    assert re.findall(r'<tr id="version-([^"]+)"', default) == [parent, child, rejected]
    assert f"{OTHER}-v" not in default


def test_the_versions_page_shows_the_gates_task_families_and_probe(browser: httpx.Client) -> None:
    promoted, refused = OTHER_NAMES
    page = browser.get("/dashboard/versions", params={"scenario": OTHER}).text
    # family, items, candidate and active mean first-attempt scores, the fall, items worse · better,
    # the Holm-adjusted p-value, refused
    assert _cells(page, f'id="family-{refused}-sql_exec"') == [
        "sql_exec", "10", "0.200", "0.900", "+0.700", "7 · 0", "0.00781", "refused"]
    assert re.search(rf'<tr id="family-{refused}-sql_exec" class="refused">', page)
    assert _cells(page, f'id="family-{refused}-string_check"') == [
        "string_check", "4", "0.750", "0.750", "+0.000", "0 · 0", "1", ""]
    assert _cells(page, f'id="family-{promoted}-sql_exec"')[4:7] == ["+0.000", "1 · 1", "0.75"]
    assert 'class="refused"' not in page[page.index(f'id="gate-{promoted}"'):page.index(f'id="version-{refused}"')]
    assert "fell in task family &#39;sql_exec&#39; by 0.700" in page  # the gate's reason

    probe = " ".join(re.sub(r"<[^>]+>", " ", re.search(
        rf'<p class="probe refused" id="probe-{refused}">(.*?)</p>', page, re.S).group(1)).split())
    assert ("accuracy 50.0% (25/50, 95% CI 36.6–63.4%) vs the base model's 64.0% (32/50, 95% CI 50.1–75.9%); "
            "fall +0.140, allowed 0.05 · refused") in probe
    assert "acc_norm 54.0% vs 66.0%, acc_bytes 60.0% vs 62.0%" in probe
    assert re.search(rf'<p class="probe" id="probe-{promoted}">', page)  # passed: not highlighted
    # A version judged before families and probes has neither.
    assert 'id="gate-r3-' not in browser.get("/dashboard/versions").text


def test_actions_act_on_the_selected_scenario(stack, browser: httpx.Client) -> None:
    app, _, (parent, child, _) = stack
    token = csrf_of(browser.get("/dashboard/versions", params={"scenario": OTHER}).text)
    default_before = _active_name(app)
    try:
        rolled = browser.post("/dashboard/versions/rollback", params={"scenario": OTHER}, data={"csrf": token})
        assert rolled.status_code == 303 and rolled.headers["location"] == f"/dashboard/versions?scenario={OTHER}"
        assert _active_name(app, OTHER) is None and _active_name(app) == default_before
        assert app.state.adapters.actives[OTHER] is None
        page = browser.get(rolled.headers["location"]).text
        assert "Rolled back: base is active, this server serves base." in page
        assert f"rollback from {OTHER_NAMES[0]}" in page
        assert f"rollback from {OTHER_NAMES[0]}" not in browser.get("/dashboard/versions").text

        browser.post(f"/dashboard/versions/{OTHER_NAMES[0]}/activate", params={"scenario": OTHER},
                     data={"csrf": token})
        assert _active_name(app, OTHER) == OTHER_NAMES[0] and _active_name(app) == default_before
        # A version of another scenario is not this one's to activate.
        browser.post(f"/dashboard/versions/{parent}/activate", params={"scenario": OTHER}, data={"csrf": token})
        assert _active_name(app, OTHER) == OTHER_NAMES[0] and _active_name(app) == default_before
        assert (f"Activation refused: no complete adapter version named &#39;{parent}&#39; in scenario"
                in browser.get("/dashboard/versions", params={"scenario": OTHER}).text)
    finally:
        browser.post(f"/dashboard/versions/{OTHER_NAMES[0]}/activate", params={"scenario": OTHER},
                     data={"csrf": token})
    assert _active_name(app, OTHER) == OTHER_NAMES[0]


def test_training_rounds_of_a_scenario_and_a_round_asked_for_it(browser: httpx.Client) -> None:
    page = browser.get("/dashboard/training", params={"scenario": OTHER}).text
    own = re.findall(r'<article class="round" id="round-(\d+)"', page)
    assert len(own) == len(OTHER_NAMES) and f"{OTHER_NAMES[1]} rejected" in page and "r3-v" not in page
    started = browser.post("/dashboard/training", params={"scenario": OTHER}, data={"csrf": csrf_of(page)})
    assert started.status_code == 303 and started.headers["location"] == f"/dashboard/training?scenario={OTHER}"
    page = browser.get(started.headers["location"]).text
    asked = re.search(rf"Round (\d+) of scenario {OTHER} requested", page).group(1)
    assert f'id="round-{asked}"' in page and 'id="start-round" disabled' in page
    default = browser.get("/dashboard/training").text
    assert f'id="round-{asked}"' not in default and not any(f'id="round-{r}"' in default for r in own)


def test_the_episodes_of_a_scenario_are_listed_under_it_alone(browser: httpx.Client) -> None:
    listed = browser.get("/dashboard/episodes", params={"scenario": OTHER}).text
    ids = re.findall(rf'<a href="/dashboard/episodes/(ep_[0-9a-f]+)\?scenario={OTHER}">', listed)
    assert len(ids) == OTHER_EPISODES and listed.count("<td>sql-tenant</td>") == OTHER_EPISODES
    versions = listed[listed.index('name="version"'):listed.index('name="task_kind"')]
    assert re.findall(r"<option[^>]*>([^<]+)</option>", versions) == ["any", "base", *OTHER_NAMES]
    assert f'<input type="hidden" name="scenario" value="{OTHER}">' in listed  # the filters stay in it
    failed = browser.get("/dashboard/episodes", params={"scenario": OTHER, "outcome": "fail"}).text
    assert 0 < failed.count("<td>sql-tenant</td>") < OTHER_EPISODES and "outcome-pass" not in failed

    # The other scenario's are the newest episodes: without the filter they would top this list.
    default = browser.get("/dashboard/episodes").text
    assert "sql-tenant" not in default and not set(ids) & set(re.findall(r"episodes/(ep_[0-9a-f]+)", default))

    # An episode's page is of its own scenario, whichever the link said.
    episode = browser.get(f"/dashboard/episodes/{ids[0]}", params={"scenario": "default"}).text
    assert 'id="scenario-name">sql<' in episode and "category sql_exec" in episode
    assert _selector(episode)[1] == OTHER and 'action="/dashboard/episodes"' in episode


async def _requests_since(app, since: datetime) -> int:
    """Every episode since `since`, of every scenario (through a store of our own: see `_active_name`)."""
    async with open_store(app.state.settings) as store:
        return sum(s.requests for s in (await version_stats(store.database.sessions, since=since)).values())


# ------------------------------------------------------------------ the pieces


def test_wilson_interval_and_gate_numbers() -> None:
    low, high = Rate(12, 20).interval
    assert (round(low, 3), round(high, 3)) == (0.387, 0.781)
    assert Rate(0, 5).interval[0] == pytest.approx(0.0, abs=1e-12) and 0.4 < Rate(0, 5).interval[1] < 0.45
    assert Rate.of(0.5, 0) is None and Rate.of(None, 10) is None
    numbers = GateNumbers.of(GATE)
    assert numbers.candidate_second == Rate(12, 20) and numbers.active_first == Rate(28, 40)
    assert GateNumbers.of(None) is None


def test_lineage_puts_each_parent_above_its_children() -> None:
    def version(number: int, parent: int | None) -> Version:
        return Version(f"r3-v{number}", "default", number, f"r3-v{parent}" if parent else None, VersionStatus.RETIRED,
                       Path("."), "", {}, [], datetime.now(UTC), None)

    rows = lineage([version(1, None), version(2, 1), version(3, 1), version(4, 2), version(5, None)], {})
    assert [(r.version.name, r.depth) for r in rows] == [
        ("r3-v1", 0), ("r3-v2", 1), ("r3-v4", 2), ("r3-v3", 1), ("r3-v5", 0)]


def test_overview_charts_leave_gaps_where_a_version_served_nothing() -> None:
    window = WINDOWS["1h"]
    since = window.start(datetime.now(UTC))
    stats = VersionStats("r3-v1", requests=4, judged=4, first_successes=1, reflected=3, rescued=3, successes=4,
                         unjudged=0, first_scored=4, first_score_total=1.5, retries_scored=3, retry_score_total=2.5,
                         scored=4, score_total=3.5)
    charts = overview_charts([TimelinePoint(2, stats, 2.0)], window, since)
    requests, first, first_score, rescues, retry_score, latency = charts
    assert requests["datasets"][0]["data"][2] == 4 and requests["datasets"][0]["data"][0] is None
    assert first["datasets"][0]["data"][2] == 25.0 and rescues["datasets"][0]["data"][2] == 100.0
    assert first_score["datasets"][0]["data"][2] == 0.375 and retry_score["datasets"][0]["data"][2] == 0.833
    assert (first_score["unit"], retry_score["unit"]) == ("score", "score")
    assert first_score["datasets"][0]["data"][0] is None
    assert latency["datasets"][0]["data"][2] == 0.5


# ------------------------------------------------------------------ Prometheus and Grafana


def metric_names() -> set[str]:
    """Every series name R3 exposes, as Prometheus sees them (counters end in _total; a histogram is
    its _bucket, _count and _sum)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    return {family.name + suffix for family in Metrics().registry.collect() for suffix in suffixes[family.type]}


def test_prometheus_scrapes_every_r3_server() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    r3 = jobs["r3"]
    assert r3.get("metrics_path", "/metrics") == "/metrics"
    discovery = r3["dns_sd_configs"][0]  # every replica of the compose service, however many
    assert discovery["names"] == ["server"] and discovery["type"] == "A" and discovery["port"] == 8000
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "server" in compose and "8000" in json.dumps(compose["server"]["environment"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["prometheus"]["volumes"]}
    assert (ROOT / mounts["/etc/prometheus/prometheus.yml"]).resolve() == ROOT / "deploy/prometheus/prometheus.yml"


def test_grafana_is_provisioned_with_a_dashboard_over_r3_metrics() -> None:
    provisioning = ROOT / "deploy/grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    source = next(s for s in sources if s["type"] == "prometheus")
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards/r3.yml").read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["volumes"]}
    folder = providers[0]["options"]["path"]
    assert (ROOT / mounts[folder]).resolve() == ROOT / "deploy/grafana/dashboards"

    board = json.loads((ROOT / "deploy/grafana/dashboards/r3.json").read_text())
    assert board["uid"] and board["title"]
    known = metric_names()
    exprs = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\br3_[a-z_]+", target["expr"]))
            assert used and used <= known, (panel["title"], used - known)
            assert target["expr"].count("(") == target["expr"].count(")")
            exprs.append(target["expr"])
    shown = " ".join(exprs)
    for series in ("r3_requests_total", "r3_rescues_total", "r3_verdicts_total", "r3_request_seconds_bucket",
                   "r3_adapter_swaps_total", "r3_auto_rollbacks_total", "r3_episode_log_backlog"):
        assert series in shown, f"no panel shows {series}"
    assert "histogram_quantile" in shown
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def _active_name(app, scenario: str = "default") -> str | None:
    """The registry's active version of `scenario`, read through a store of our own: the server's
    connection pool belongs to its event loop, in its thread."""
    async def read() -> str | None:
        async with open_store(app.state.settings) as store:
            version = await store.registry.active(scenario)
            return version.name if version else None

    return asyncio.run(read())


async def _write_directly(app, episodes) -> None:
    """Bulk-write through a store of our own (see `_active_name`)."""
    async with open_store(app.state.settings) as store:
        await write_episodes(store.episodes, episodes)


# ------------------------------------------------------------------ live canary

CANARY_FRACTION = 0.25
# (episodes, first attempts passed, of the failures rescued) of each side: with min episodes 5 both
# outcomes are compared, and the test goes on (far too few for either boundary).
CANARY_SIDE, CURRENT_SIDE = (20, 15, 2), (40, 24, 4)


@pytest.fixture
def canary_world(tmp_path: Path):
    """(app, url, settings) of a server on a scripted engine (no model) over its own embedded SQLite:
    r3-v1 active in the default scenario, r3-v2 its running canary on a quarter of the traffic, and
    each side's judged episodes as CANARY_SIDE and CURRENT_SIDE say; also a pinned and an unjudged
    episode, which the test does not count. Its canary watch never runs by itself."""
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None,
                        admin_key=ADMIN_KEY, canary_min_episodes=5, canary_check_s=3600, adapter_poll_s=3600)
    files = tmp_path / "trained"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")

    async def prepare() -> None:
        async with open_store(settings) as store:
            v1 = await store.registry.register(files, None, {}, [])
            await store.registry.activate(v1.name, actor="test")
            v2 = await store.registry.register(files, v1.name, {}, [])
            await store.canaries.start(v2.name, CANARY_FRACTION)
            episodes = [*_side_episodes(v2.name, True, *CANARY_SIDE), *_side_episodes(v1.name, False, *CURRENT_SIDE),
                        *_side_episodes(v1.name, None, 1, 0, 0),  # pinned to r3-v1: no side
                        *_side_episodes(v2.name, True, 1, 0, 0, judged=False)]  # the judge gave no verdict
            await write_episodes(store.episodes, episodes)

    asyncio.run(prepare())
    app = create_app(settings, engine=ScriptedEngine(lambda prompt, adapter: "right"))
    with ThreadedServer(app) as url:
        yield app, url, settings


def _side_episodes(adapter: str, canary: bool | None, n: int, passed: int, rescued: int,
                   judged: bool = True) -> list[Episode]:
    """`n` episodes served by `adapter` on `canary`'s side: `passed` first attempts pass (score 1), the
    others fail (score 0) and are retried, the first `rescued` of the retries passing."""
    def attempt(number: int, success: bool | None) -> AttemptRecord:
        return AttemptRecord(number=number, completion_id=f"chatcmpl-{new_episode_id()[3:]}", finish_reason="stop",
                             prompt_tokens=10, completion_tokens=2, latency_s=0.1, content="answer", success=success,
                             score=None if success is None else float(success))

    episodes = []
    for i in range(n):
        first = attempt(1, i < passed if judged else None)
        attempts = [first] if first.success is not False else [first, attempt(2, i - passed < rescued)]
        episodes.append(Episode(id=new_episode_id(), tenant=None, model="r3", adapter=adapter, task_kind="generic",
                                verifier={"type": "exact", "expected": "right"}, store_text=False, messages=None,
                                tools=None, tool_choice=None, attempts=attempts, canary=canary, revision=1))
    return episodes


def _expected(measure: str) -> Comparison:
    """The test's comparison on the counts the fixture wrote, worked by r3.canary from them."""
    def arms(n: int, passed: int, rescued: int) -> tuple[Arm, Arm]:
        return Arm(n, passed, passed), Arm(n - passed, rescued, rescued)

    (canary_first, canary_rescue), (current_first, current_rescue) = arms(*CANARY_SIDE), arms(*CURRENT_SIDE)
    counts = CanaryCounts(canary_first, current_first, canary_rescue, current_rescue)
    verdict = decide(counts, CanaryPolicy(min_episodes=5), elapsed_s=1)
    assert verdict.decision is CanaryDecision.CONTINUE
    return next(c for c in verdict.comparisons if c.measure == measure)


def test_the_canary_panel_shows_its_counts_means_intervals_and_statistics(canary_world) -> None:
    _, url, _ = canary_world
    with closing(logged_in(url)) as client:
        page = client.get("/dashboard/versions").text
        overview = client.get("/dashboard").text
    for shown in (page, overview):
        flat = " ".join(shown.split())
        assert 'id="canary-version">r3-v2<' in shown and 'id="canary-baseline">r3-v1<' in shown
        assert 'id="canary-fraction">25.0%<' in shown and 'id="canary-state" class="canary-state">running<' in shown
        assert "the test now: <strong>continue</strong>" in flat
        assert 'id="canary-promote"' in shown and 'id="canary-abort"' in shown
    # outcome, canary mean (n), current mean (n), difference [always-valid interval] and its coverage,
    # log Λ(0), log Λ(−margin), the boundary log(2/α), where the test stands
    first, rescue = _expected("first_attempt_score"), _expected("rescue_rate")
    assert (first.canary_n, first.current_n, rescue.canary_n, rescue.current_n) == (20, 40, 5, 16)
    for c, label, means in ((first, "first-attempt score", ["0.750 (20)", "0.600 (40)"]),
                            (rescue, "rescue rate (of failed first attempts)", ["0.400 (5)", "0.250 (16)"])):
        assert _cells(page, f'id="canary-{c.measure}"') == [
            label, *means, f"+0.150 [{c.low:+.3f}, {c.high:+.3f}] 97.5%", f"{c.worse_statistic:.2f}",
            f"{c.not_worse_statistic:.2f}", f"{math.log(2 / 0.05):.2f}", "undecided"]
    chart = json.loads(re.search(r'<script type="application/json" id="plot-canary">(.*?)</script>', page,
                                 re.S).group(1))
    assert chart["type"] == "bar"
    assert chart["labels"] == ["first-attempt score", "rescue rate (of failed first attempts)"]
    worse, not_worse, boundary = chart["datasets"]
    assert worse["data"] == [round(first.worse_statistic, 3), round(rescue.worse_statistic, 3)]
    assert not_worse["data"] == [round(first.not_worse_statistic, 3), round(rescue.not_worse_statistic, 3)]
    assert not_worse["label"] == "log Λ(−0.02): not worse than the margin?"
    assert boundary["type"] == "line" and boundary["data"] == [round(math.log(40), 3)] * 2


def test_promote_now_activates_the_canary_and_says_so_with_its_numbers(canary_world) -> None:
    app, url, _ = canary_world
    with closing(logged_in(url)) as client:
        token = csrf_of(client.get("/dashboard/versions").text)
        done = client.post("/dashboard/canary/promote", data={"csrf": token})
        assert done.status_code == 303 and done.headers["location"] == "/dashboard/versions?scenario=default"
        assert _active_name(app) == "r3-v2" and app.state.adapters.actives["default"] == "r3-v2"
        page = client.get(done.headers["location"]).text
        flat = " ".join(page.split())
        assert "Canary r3-v2 promoted: it is active, this server serves r3-v2." in flat
        assert 'id="canary-state" class="canary-state">promoted<' in page and 'id="canary-promote"' not in page
        first = _expected("first_attempt_score")
        said = (f"promoted by an admin; the test said continue: first_attempt_score 0.750 (n=20) vs 0.600 (n=40), "
                f"difference +0.150 in [{first.low:+.3f}, {first.high:+.3f}]")
        assert "by admin at" in flat and said in flat  # the panel, ended
        audit = flat[flat.index("Audit log"):]
        assert f"<td>admin</td><td>canary_promoted</td><td>r3-v1</td> <td>r3-v2</td><td>{said}" in audit
        # Ended: a second press (another tab) is told so and changes nothing.
        again = client.post("/dashboard/canary/promote", data={"csrf": token})
        assert again.status_code == 303 and _active_name(app) == "r3-v2"
        assert "Promotion refused: no canary runs in scenario" in client.get("/dashboard/versions").text


def test_abort_now_rejects_the_canary_and_keeps_the_current_version(canary_world) -> None:
    app, url, settings = canary_world
    with closing(logged_in(url)) as client:
        token = csrf_of(client.get("/dashboard").text)
        done = client.post("/dashboard/canary/abort", data={"csrf": token})
        assert done.status_code == 303
        assert _active_name(app) == "r3-v1" and app.state.adapters.actives["default"] == "r3-v1"
        assert asyncio.run(_status(settings, "r3-v2")) == VersionStatus.REJECTED
        page = " ".join(client.get(done.headers["location"]).text.split())
        assert "Canary r3-v2 aborted: r3-v1 stays active, this server serves r3-v1." in page
        assert 'class="canary-state">aborted<' in page and "aborted by an admin; the test said continue:" in page
        assert "<td>admin</td><td>canary_aborted</td><td>r3-v1</td> <td>r3-v2</td>" in page
        assert 'class="canary-state">aborted<' in client.get("/dashboard").text  # the overview too


def test_no_canary_no_panel(browser: httpx.Client) -> None:
    for path in ("/dashboard", "/dashboard/versions"):
        assert 'id="canary"' not in browser.get(path).text
    token = csrf_of(browser.get("/dashboard").text)
    assert browser.post("/dashboard/canary/abort", data={"csrf": token}).status_code == 303
    assert "Abort refused: no canary runs in scenario" in browser.get("/dashboard/versions").text


async def _status(settings: Settings, name: str) -> str:
    async with open_store(settings) as store:
        return (await store.registry.get(name)).status
