"""Scenarios on the real app with a scripted engine (no model; the embedded SQLite): one lineage per
workload, chosen by `model`, each with its own active version, rollback, rounds and episodes; an API
key's default scenario; unknown names are 404s, never new lineages."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import ScriptedEngine

from r3.settings import Settings
from r3.store.registry import model_name, version_name, version_of
from server.app import create_app
from trainer.worker import Waiting, next_scenario

ADMIN = {"Authorization": "Bearer admin-key"}
ASK = [{"role": "user", "content": "Write the query."}]


def answer_by_adapter(prompt: str, adapter: str | None) -> str:
    return f"served by {adapter or 'base'}"


@pytest.fixture
async def served(tmp_path: Path):
    """The app's client, its store and a folder holding adapter files to register."""
    engine = ScriptedEngine(answer_by_adapter)
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None,
                        admin_key="admin-key", adapter_poll_s=0.05)
    app = create_app(settings, engine=engine)
    files = tmp_path / "trained"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            yield http, app.state.store, files


async def ask(http: httpx.AsyncClient, model: str, **headers: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", headers=headers,
                           json={"model": model, "messages": ASK, "metadata": {"category": "joins"}})


def test_version_names_per_lineage() -> None:
    assert version_name(3) == "r3-v3" and version_name(2, "sql") == "sql-v2"
    assert model_name("r3-v3") == "r3@v3" and model_name("sql-writer-v12") == "sql-writer@v12"
    assert version_of("sql-writer@v12") == "sql-writer-v12" and version_of("r3-v3") == "r3-v3"
    assert version_of("sql") is None and version_of("SmolLM2-135M-Instruct") is None


async def test_each_scenario_serves_its_own_lineage(served) -> None:
    http, store, files = served
    created = await http.post("/admin/scenarios", headers=ADMIN,
                              json={"name": "sql", "description": "SQL writer", "training": {"gate_alpha": 0.01}})
    assert created.status_code == 200, created.text
    assert created.json() | {"created_at": None} == {"name": "sql", "description": "SQL writer", "model": "sql",
                                                     "training": {"gate_alpha": 0.01}, "active": None,
                                                     "created_at": None}
    # Versions count per lineage: the default scenario's first is r3-v1, sql's first sql-v1.
    default_v1 = await store.registry.register(files, None, {}, [])
    sql_v1 = await store.registry.register(files, None, {}, [], scenario="sql")
    sql_v2 = await store.registry.register(files, sql_v1.name, {}, [], scenario="sql")
    assert (default_v1.name, sql_v1.name, sql_v2.name) == ("r3-v1", "sql-v1", "sql-v2")

    promoted = await http.post("/admin/adapters/sql-v2/activate", headers=ADMIN)
    assert promoted.json() == {"scenario": "sql", "active": "sql-v2", "serving": "sql-v2", "refused": None}
    # The default scenario is untouched by sql's promotion.
    assert (await ask(http, "r3")).json()["choices"][0]["message"]["content"] == "served by base"
    answered = (await ask(http, "sql")).json()
    assert answered["choices"][0]["message"]["content"] == "served by sql-v2"
    assert answered["r3"]["adapter"] == "sql-v2"
    episode = (await http.get(f"/v1/episodes/{answered['r3']['episode_id']}")).json()
    assert (episode["scenario"], episode["category"]) == ("sql", "joins")
    pinned = (await ask(http, "sql@v1")).json()
    assert pinned["choices"][0]["message"]["content"] == "served by sql-v1"

    models = {card["id"] for card in (await http.get("/v1/models")).json()["data"]}
    assert {"r3", "base", "sql", "r3@v1", "sql@v1", "sql@v2"} <= models

    # Rollback is per scenario, and the audit log says whose lineage changed.
    rolled = await http.post("/admin/adapters/rollback", headers=ADMIN, params={"scenario": "sql"})
    assert rolled.json()["active"] == "sql-v1"
    nothing = await http.post("/admin/adapters/rollback", headers=ADMIN)
    assert nothing.status_code == 409  # the default scenario has no active version
    listed = (await http.get("/admin/adapters", headers=ADMIN, params={"scenario": "sql"})).json()
    assert (listed["active"], [v["name"] for v in listed["data"]]) == ("sql-v1", ["sql-v1", "sql-v2"])
    log = (await http.get("/admin/actions", headers=ADMIN, params={"scenario": "sql"})).json()["data"]
    assert [(a["action"], a["from"], a["to"]) for a in log][:2] == [("activate", "sql-v2", "sql-v1"),
                                                                    ("activate", None, "sql-v2")]

    # A version is activated only in its own scenario.
    wrong = await http.post("/admin/adapters/r3-v1/activate", headers=ADMIN, params={"scenario": "sql"})
    assert wrong.status_code == 404


@pytest.mark.parametrize("model", ["sqll", "sqll@v1", "other-v1"])
async def test_an_unknown_scenario_is_a_404_never_a_new_lineage(served, model: str) -> None:
    http, store, _ = served
    await http.post("/admin/scenarios", headers=ADMIN, json={"name": "sql"})
    refused = await ask(http, model)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert [s.name for s in await store.scenarios.list_all()] == ["default", "sql"]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"name": "r3"}, 400, "name"), ({"name": "Sql"}, 400, "name"), ({"name": "sql-v2"}, 400, "name"),
    ({"name": "x", "training": {"port": 1}}, 400, "training"),
    ({"name": "x", "training": {"train_num_generations": 1}}, 400, "training"),
    ({"name": "default"}, 409, "name"),
])
async def test_bad_scenarios_are_refused_naming_the_field(served, body: dict, status: int, param: str) -> None:
    http, _, _ = served
    refused = await http.post("/admin/scenarios", headers=ADMIN, json=body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["param"] == param


async def test_admin_routes_refuse_an_unknown_scenario(served) -> None:
    http, _, _ = served
    for method, path in (("GET", "/admin/adapters"), ("POST", "/admin/adapters/rollback"), ("POST", "/admin/train")):
        refused = await http.request(method, path, headers=ADMIN, params={"scenario": "nope"})
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "scenario", path


async def test_a_keys_default_scenario_is_what_r3_means_for_it(served) -> None:
    http, store, files = served
    await http.post("/admin/scenarios", headers=ADMIN, json={"name": "sql"})
    version = await store.registry.register(files, None, {}, [], scenario="sql")
    await http.post(f"/admin/adapters/{version.name}/activate", headers=ADMIN)
    tenant, key = await store.keys.create("sql-team")
    await store.keys.set_default_scenario(tenant, "sql")
    _, other = await store.keys.create("everyone-else")
    mine = (await ask(http, "r3", Authorization=f"Bearer {key}")).json()
    theirs = (await ask(http, "r3", Authorization=f"Bearer {other}")).json()
    assert mine["choices"][0]["message"]["content"] == "served by sql-v1"
    assert theirs["choices"][0]["message"]["content"] == "served by base"
    episode = (await http.get(f"/v1/episodes/{mine['r3']['episode_id']}", headers={"Authorization": f"Bearer {key}"}))
    assert episode.json()["scenario"] == "sql"


async def test_training_is_requested_and_listed_per_scenario(served) -> None:
    http, _, _ = served
    await http.post("/admin/scenarios", headers=ADMIN, json={"name": "sql"})
    sql = (await http.post("/admin/train", headers=ADMIN, params={"scenario": "sql"})).json()
    default = (await http.post("/admin/train", headers=ADMIN)).json()
    again = (await http.post("/admin/train", headers=ADMIN, params={"scenario": "sql"})).json()
    assert (sql["scenario"], default["scenario"], again["round"], again["new"]) == ("sql", "default", sql["round"],
                                                                                    False)
    listed = (await http.get("/admin/train", headers=ADMIN, params={"scenario": "sql"})).json()
    assert [r["round"] for r in listed["rounds"]] == [sql["round"]]


def waiting(scenario: str, requested: bool = False, new: int = 0, waited: float = 0.0) -> Waiting:
    return Waiting(scenario, requested, new, min_failures=16, waited_s=waited, interval_s=3600)


def test_the_next_round_goes_to_a_request_then_to_an_overdue_scenario_then_to_the_most_failures() -> None:
    busy, quiet, asked = waiting("busy", new=40), waiting("quiet", new=3, waited=4000), waiting("asked", True)
    assert next_scenario([busy, quiet, asked]) == ("asked", "admin")
    assert next_scenario([busy, quiet]) == ("quiet", "interval")  # bounded waiting: it is overdue
    assert next_scenario([busy, waiting("b2", new=20)]) == ("busy", "failures")
    assert next_scenario([waiting("few", new=3, waited=10)]) is None
