"""The live canary on the real app with a scripted engine and verifier (no model; the embedded
SQLite): a worse canary is aborted and a better one promoted by the sequential test, no client sees
an error, pinned requests never move, and two replicas split the traffic identically."""

from __future__ import annotations

import asyncio
import math
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from support import ScriptedEngine

from r3.canary import Arm, CanaryCounts, CanaryDecision, CanaryPolicy, decide, in_canary, log_msprt
from r3.settings import Settings
from server.app import create_app

ADMIN = {"Authorization": "Bearer admin-key"}
VERIFIER = {"type": "exact", "expected": "right"}
REQUESTS = 60


def script(good: set[str]):
    """Versions in `good` answer right; the others answer wrong, reflect, and answer wrong again."""
    return lambda prompt, adapter: "right" if adapter in good else "wrong"


@pytest.fixture
async def replicas(tmp_path: Path):
    """Two servers on one store (the embedded SQLite), each with its own scripted engine; and a folder
    of adapter files to register."""
    good: set[str] = {"r3-v1"}
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None,
                        admin_key="admin-key", canary_min_episodes=5, canary_check_s=3600, adapter_poll_s=3600)
    files = tmp_path / "trained"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")
    async with AsyncExitStack() as stack:
        apps = [create_app(settings, engine=ScriptedEngine(script(good))) for _ in range(2)]
        clients = []
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
            clients.append(await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3")))
        yield apps, clients, files, good


async def start_canary(apps, files: Path, parent: str | None, fraction: float) -> str:
    store = apps[0].state.store
    candidate = await store.registry.register(files, parent, {}, [])
    await store.canaries.start(candidate.name, fraction)
    for app in apps:
        await app.state.adapters.sync()
    return candidate.name


async def written(apps) -> None:
    """Wait until every replica's recorded episodes are in the store."""
    for app in apps:
        await asyncio.wait_for(app.state.episode_log.flush(), 60)


async def send(client: httpx.AsyncClient, request_id: str, model: str = "r3") -> dict:
    response = await client.post("/v1/chat/completions", headers={"x-request-id": request_id}, json={
        "model": model, "messages": [{"role": "user", "content": f"say right ({request_id})"}],
        "verifier": VERIFIER, "reflect": {"max_retries": 1}})
    assert response.status_code == 200, response.text  # no client ever sees an error
    return response.json()


async def test_a_worse_canary_is_aborted_and_a_better_one_promoted(replicas) -> None:
    apps, clients, files, good = replicas
    store, watch = apps[0].state.store, apps[0].state.canary_watch
    v1 = await store.registry.register(files, None, {}, [])
    await store.registry.activate(v1.name, actor="test")
    worse = await start_canary(apps, files, v1.name, 0.5)

    served = {}
    for i in range(REQUESTS):
        request_id = f"req-{i}"
        answers = [await send(client, request_id) for client in clients]
        # Both replicas put a request id on the same side, the one the shared hash says.
        assert {a["r3"]["adapter"] for a in answers} == {worse if in_canary(request_id, 0.5) else v1.name}
        served[request_id] = answers[0]
    pinned = await send(clients[0], "pinned-0", model="r3@v1")
    assert pinned["r3"]["adapter"] == v1.name
    episode = (await clients[0].get(f"/v1/episodes/{pinned['r3']['episode_id']}")).json()
    assert episode["adapter"] == v1.name  # a pinned request is never moved, nor counted

    # Episodes reach the store off the response path; the canary counts what the store holds.
    await written(apps)
    status = (await clients[0].get("/admin/canary", headers=ADMIN)).json()
    assert (status["version"], status["baseline"], status["state"]) == (worse, v1.name, "running")
    first = status["comparisons"][0]
    assert (first["canary_mean"], first["current_mean"]) == (0.0, 1.0) and first["worse"]
    assert first["canary_n"] + first["current_n"] == 2 * REQUESTS

    decided = await watch.check()
    assert [(c.version, v.decision) for c, v in decided] == [(worse, CanaryDecision.ABORT)]
    assert (await store.registry.get(worse)).status == "rejected"
    assert (await store.registry.active()).name == v1.name
    after = [await send(client, "req-after") for client in clients]
    await apps[1].state.adapters.sync()
    assert {a["r3"]["adapter"] for a in [*after, await send(clients[1], "req-after-2")]} == {v1.name}
    log = (await clients[0].get("/admin/actions", headers=ADMIN)).json()["data"]
    assert log[0]["action"] == "canary_aborted" and "worse than the current version" in log[0]["reason"]

    # A better canary: its first attempts pass where the current version's fail.
    good.clear()
    better = await start_canary(apps, files, v1.name, 0.5)
    good.add(better)
    for i in range(REQUESTS):
        await send(clients[i % 2], f"second-{i}")
    await written(apps)
    decided = await watch.check()
    assert [(c.version, v.decision) for c, v in decided] == [(better, CanaryDecision.PROMOTE)]
    assert (await store.registry.active()).name == better
    await apps[1].state.adapters.sync()
    assert (await send(clients[1], "third"))["r3"]["adapter"] == better
    ended = (await clients[0].get("/admin/canary", headers=ADMIN)).json()
    assert (ended["state"], ended["decided_by"], ended["decision"]) == ("promoted", "canary", "promote")


async def test_an_admin_promotes_or_aborts_a_running_canary(replicas) -> None:
    apps, clients, files, _ = replicas
    nothing = await clients[0].post("/admin/canary/abort", headers=ADMIN)
    assert nothing.status_code == 409
    assert (await clients[0].get("/admin/canary", headers=ADMIN)).status_code == 404
    candidate = await start_canary(apps, files, None, 0.2)
    aborted = (await clients[0].post("/admin/canary/abort", headers=ADMIN)).json()
    assert (aborted["state"], aborted["decided_by"]) == ("aborted", "admin")
    again = await start_canary(apps, files, None, 0.2)
    promoted = (await clients[0].post("/admin/canary/promote", headers=ADMIN)).json()
    assert promoted["state"] == "promoted" and candidate != again
    assert (await apps[0].state.store.registry.active()).name == again


def test_the_msprt_statistic_is_the_closed_form_of_johari_et_al() -> None:
    """Λ(θ0) = sqrt(V/(V+τ²)) exp(τ²(θ̂−θ0)²/(2V(V+τ²))), checked on numbers worked by hand."""
    v, tau, difference = 0.001, 0.05, 0.1
    expected = math.sqrt(v / (v + tau ** 2)) * math.exp(tau ** 2 * difference ** 2 / (2 * v * (v + tau ** 2)))
    assert math.isclose(math.exp(log_msprt(difference, v, 0.0, tau)), expected)


def test_too_few_failures_leave_the_rescue_rate_out_rather_than_hold_the_decision() -> None:
    many_right = Arm()
    for _ in range(400):
        many_right = many_right.add(1.0)
    few_wrong = Arm(200, 100.0, 100.0)
    counts = CanaryCounts(canary_first=many_right, current_first=few_wrong, canary_rescue=Arm(),
                          current_rescue=Arm(100, 50.0, 50.0))
    verdict = decide(counts, CanaryPolicy(min_episodes=30), elapsed_s=60)
    assert verdict.decision is CanaryDecision.PROMOTE
    assert "rescue_rate: too few to compare yet (n=0 vs 100)" in verdict.reason
