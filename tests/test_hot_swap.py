"""Hot-swap, rollback and the admin API, through a real server, with the registry on the same database;
and the adapter manager itself, on the session's engine, meeting versions it cannot serve."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from support import ThreadedServer, make_lora, make_model, truncated_copy

from r3.settings import Settings
from r3.store.store import open_store
from server.adapters import AdapterManager
from server.app import create_app

MODEL = "SmolLM2-135M-Instruct"
ADMIN = {"Authorization": "Bearer admin-key"}
GRACE_S = 0.5


@pytest.fixture(scope="module")
def stack(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("swap-data")
    settings = Settings(models_dir=model_path.parent, data_dir=data_dir, admin_key="admin-key",
                        redis_url="redis://127.0.0.1:6379/0", adapter_poll_s=0.2, adapter_grace_s=GRACE_S,
                        default_max_tokens=1, reflection_max_tokens=2)
    async def register() -> list[str]:
        async with open_store(settings) as store:  # the embedded SQLite migrates itself
            names: list[str] = []
            for seed in range(3):
                folder = make_lora(model_path, tmp_path_factory.mktemp("lora") / "adapter", seed)
                names.append((await store.registry.register(folder, names[-1] if names else None, {}, [])).name)
            return names

    versions = asyncio.run(register())
    app = create_app(settings)
    with ThreadedServer(app) as base_url:
        yield app, base_url, versions


def activate(url: str, name: str) -> None:
    response = httpx.post(f"{url}/admin/adapters/{name}/activate", headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text


def test_swaps_under_load_drop_no_request_and_pin_each_to_one_version(stack) -> None:
    app, url, versions = stack
    # (asked at, answered at, version): the server flips to a version at some moment of its activation call
    timeline: list[tuple[float, float, str]] = [(time.monotonic(), 0.0, versions[0])]
    activate(url, versions[0])
    timeline[0] = (timeline[0][0], time.monotonic(), versions[0])
    results: list[tuple[float, float, int, dict]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                started = time.monotonic()
                response = http.post(f"{url}/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                    "verifier": {"type": "regex", "pattern": "^never$"}, "reflect": {"max_retries": 1}})
                results.append((started, time.monotonic(), response.status_code, response.json()))

    workers = [threading.Thread(target=client) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for swap in range(20):  # promotions and rollbacks, back and forth over three versions
            name = versions[(swap + 1) % len(versions)]
            asked = time.monotonic()
            activate(url, name)
            timeline.append((asked, time.monotonic(), name))
            time.sleep(0.25)
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    assert results and all(status == 200 for _, _, status, _ in results), \
        [body for _, _, status, body in results if status != 200][:3]

    def active_during(start: float, end: float) -> set[str]:
        """Versions that may have been active at some moment of [start, end]: a version becomes active
        during its activation call (no earlier than it was asked for) and stops during the next one (no
        later than that one's answer). Measured from when it was answered only, a request that ran
        between the server's flip and the test reading the clock would be counted against the wrong version."""
        names = set()
        for (asked, _, name), (_, next_answered, _) in zip(timeline, [*timeline[1:], (0.0, float("inf"), "")]):
            if asked <= end and next_answered >= start:
                names.add(name)
        return names

    for start, end, _, body in results:
        assert body["r3"]["adapter"] in active_during(start, end)
        assert len(body["r3"]["attempts"]) == 2  # both attempts ran (on the one pinned version)
    served = {body["r3"]["adapter"] for _, _, _, body in results}
    assert len(served) >= 2  # the load really spanned swaps

    # Versions no longer active are unloaded once idle and past the grace period.
    final = timeline[-1][2]
    deadline = time.monotonic() + 10
    while set(app.state.engine.adapters()) != {final}:
        assert time.monotonic() < deadline, \
            f"loaded: {set(app.state.engine.adapters())}, active: {app.state.adapters.active}, final: {final}"
        time.sleep(0.1)


def test_requests_can_pin_a_version_or_the_base(stack) -> None:
    app, url, versions = stack
    activate(url, versions[0])

    def served(model: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})

    assert served(MODEL).json()["r3"]["adapter"] == versions[0]
    assert served("base").json()["r3"]["adapter"] == "base"
    pinned = versions[2].replace("r3-", "r3@")
    assert served(pinned).json()["r3"]["adapter"] == versions[2]  # loaded on demand
    asyncio.run(_wait_unloaded(app, versions[2]))  # and let go once idle: it is not the active version
    missing = served("r3@v99")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_admin_rollback_activation_and_audit_log(stack) -> None:
    _, url, versions = stack
    activate(url, versions[2])
    listed = httpx.get(f"{url}/admin/adapters", headers=ADMIN).json()
    by_name = {v["name"]: v for v in listed["data"]}
    assert by_name[versions[2]]["status"] == "active" and by_name[versions[2]]["parent"] == versions[1]
    assert listed["active"] == versions[2]
    assert by_name[versions[0]]["live"]["requests"] > 0  # the load above was served by it

    rolled = httpx.post(f"{url}/admin/adapters/rollback", headers=ADMIN).json()
    assert rolled == {"scenario": "default", "active": versions[1], "serving": versions[1], "refused": None}
    to_base = httpx.post(f"{url}/admin/adapters/base/activate", headers=ADMIN).json()
    assert to_base["serving"] == "base"
    nothing = httpx.post(f"{url}/admin/adapters/rollback", headers=ADMIN)
    assert nothing.status_code == 409
    assert httpx.post(f"{url}/admin/adapters/r3-v99/activate", headers=ADMIN).status_code == 404

    actions = httpx.get(f"{url}/admin/actions", headers=ADMIN).json()["data"]
    assert [(a["from"], a["to"]) for a in actions[:2]] == [(versions[1], None), (versions[2], versions[1])]
    assert all(a["actor"] == "admin" and a["at"] for a in actions[:2])
    assert httpx.post(f"{url}/admin/adapters/rollback").status_code == 401


def test_training_can_be_requested_and_watched(stack) -> None:
    _, url, _ = stack
    asked = httpx.post(f"{url}/admin/train", headers=ADMIN).json()
    state = httpx.get(f"{url}/admin/train", headers=ADMIN).json()
    assert state["current"]["round"] == asked["round"] and state["current"]["status"] == "requested"
    assert state["current"]["requested_by"] == "admin"


def test_stats_and_metrics_count_what_was_served(stack) -> None:
    _, url, _ = stack
    judged_request = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "verifier": {"type": "regex", "pattern": "^never$"}, "reflect": {"max_retries": 0}})
    assert judged_request.status_code == 200
    def served_in_database() -> tuple[dict, int]:
        stats = httpx.get(f"{url}/admin/stats", params={"window_s": 3600}, headers=ADMIN).json()
        return stats, sum(v["requests"] for v in stats["versions"].values())

    def served_by_metrics() -> float:
        text = httpx.get(f"{url}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("r3_requests_total{"))

    deadline = time.monotonic() + 10
    while (numbers := served_in_database())[1] != served_by_metrics():  # the log writes in batches
        assert time.monotonic() < deadline, (numbers[1], served_by_metrics())
        time.sleep(0.1)
    stats = numbers[0]
    judged = [v for v in stats["versions"].values() if v["judged"]]
    assert judged and all(v["first_attempt_success"] == 0.0 for v in judged)  # "^never$" never passes

    text = httpx.get(f"{url}/metrics").text
    assert 'r3_verdicts_total{verdict="fail",version="' in text
    swaps = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("r3_adapter_swaps_total"))
    activations = httpx.get(f"{url}/admin/actions", headers=ADMIN).json()["data"]
    assert swaps >= 1 and swaps <= len(activations) + 1
    assert "r3_request_seconds_bucket" in text and "r3_episode_log_backlog" in text


def test_a_version_whose_files_changed_is_refused_and_serving_goes_on(stack, tmp_path: Path) -> None:
    app, url, versions = stack
    activate(url, "base")
    path = Path(app.state.settings.adapters_path) / versions[1]
    config = path / "adapter_config.json"
    original = config.read_text()
    config.write_text(json.dumps({**json.loads(original), "tampered": True}))
    try:
        asyncio.run(_wait_unloaded(app, versions[1]))
        activate(url, versions[1])  # recorded as active, but its files no longer match the sha256
        response = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert response.status_code == 200 and response.json()["r3"]["adapter"] == "base"
        assert versions[1] not in app.state.engine.adapters()
    finally:
        config.write_text(original)
        activate(url, "base")


async def _wait_unloaded(app, name: str) -> None:
    deadline = time.monotonic() + 10
    while name in app.state.engine.adapters():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


@pytest.fixture
async def registry(tmp_path: Path):
    """An adapter registry on a fresh SQLite database of its own."""
    async with open_store(Settings(_env_file=None, data_dir=tmp_path / "data")) as store:
        yield store.registry


@pytest.fixture
async def manager(transformers_engine, registry: AdapterRegistry):
    """An adapter manager polling every 50 ms, not started; its versions are unloaded after the test."""
    manager = AdapterManager(transformers_engine, registry, poll_s=0.05, grace_s=0)
    yield manager
    await manager.close()
    for name in transformers_engine.adapters():
        await transformers_engine.unload_adapter(name)


def count_loads(monkeypatch: pytest.MonkeyPatch, engine, fail_once: str | None = None) -> dict[str, int]:
    """Calls of `engine.load_adapter` by adapter name, as they happen; the first load of `fail_once`
    raises a RuntimeError (no refusal: an unforeseen failure)."""
    calls: dict[str, int] = {}
    load = engine.load_adapter

    async def counting_load(name: str, path: Path) -> None:
        calls[name] = calls.get(name, 0) + 1
        if name == fail_once and calls[name] == 1:
            raise RuntimeError("injected load failure")
        await load(name, path)

    monkeypatch.setattr(engine, "load_adapter", counting_load)
    return calls


async def wait_until(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_versions_the_engine_refuses_are_recorded_skipped_and_the_next_is_taken(
        manager, registry, transformers_engine, model_path: Path, tmp_path: Path, monkeypatch) -> None:
    good = make_lora(model_path, tmp_path / "good", seed=1)
    cut = await registry.register(truncated_copy(good, tmp_path / "cut"), None, {}, [])
    other_model = make_model(model_path, tmp_path / "other-model", hidden_size=512, num_attention_heads=8,
                             intermediate_size=1024, num_hidden_layers=2)
    misfit = await registry.register(make_lora(other_model, tmp_path / "misfit", seed=2), None, {}, [])
    loads = count_loads(monkeypatch, transformers_engine)

    await registry.activate(cut.name, actor="test")
    await manager.start()  # the active version cannot be served: the server starts anyway, on the base
    assert manager.active is None
    assert "cannot read the weights" in manager.refused[cut.name]

    await registry.activate(misfit.name, actor="test")
    await wait_until(lambda: misfit.name in manager.refused)
    assert "trained for another model" in manager.refused[misfit.name] and manager.active is None
    await asyncio.sleep(0.5)  # ten polls: a refused version is not tried again
    assert loads == {cut.name: 1, misfit.name: 1}

    taken = await registry.register(good, None, {}, [])
    await registry.activate(taken.name, actor="test")
    await wait_until(lambda: manager.active == taken.name)
    assert set(transformers_engine.adapters()) == {taken.name}


async def test_an_unforeseen_failure_of_one_sync_does_not_stop_the_polling(
        manager, registry, transformers_engine, model_path: Path, tmp_path: Path, monkeypatch) -> None:
    version = await registry.register(make_lora(model_path, tmp_path / "lora", seed=3), None, {}, [])
    loads = count_loads(monkeypatch, transformers_engine, fail_once=version.name)
    await manager.start()
    await registry.activate(version.name, actor="test")
    await wait_until(lambda: manager.active == version.name)  # the poll after the failed one takes it
    assert loads[version.name] == 2 and version.name not in manager.refused

