"""`GET /v1/models` and `GET /v1/models/{id}`: what a request may name in `model` (`HEAD` too, as
load balancers and health checkers probe them)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from r3.engines.base import Engine
from r3.store.models import DEFAULT_SCENARIO
from r3.store.registry import AdapterRegistry, model_name, version_of
from server.adapters import AdapterManager
from server.auth import CheckedRoute
from server.deps import AdaptersDep, EngineDep, RegistryDep, StartedDep
from server.errors import UnknownModel
from server.protocol import ModelCard, ModelList

router = APIRouter(route_class=CheckedRoute)


@router.get("/v1/models")
@router.head("/v1/models", include_in_schema=False)  # load balancers probe with HEAD
async def list_models(engine: EngineDep, adapters: AdaptersDep, registry: RegistryDep,
                      started: StartedDep) -> ModelList:
    """Every name a request may use: the served id and `r3` (the default scenario's active adapter
    version on the base), each other scenario by its name (its active version), `base`, each
    `R3_LORA_MODULES` adapter, and each recorded version as `r3@vN` (`<scenario>@vN`)."""
    return ModelList(data=await _cards(engine, adapters, registry, started))


@router.get("/v1/models/{model_id:path}")
@router.head("/v1/models/{model_id:path}", include_in_schema=False)
async def retrieve_model(model_id: str, engine: EngineDep, adapters: AdaptersDep, registry: RegistryDep,
                         started: StartedDep) -> ModelCard:
    """One of the models `GET /v1/models` lists (`client.models.retrieve("r3")`); a version also by its
    registry name (`r3-v3`); any other id is a 404."""
    pinned = version_of(model_id)
    wanted = model_name(pinned) if pinned else model_id
    card = next((c for c in await _cards(engine, adapters, registry, started) if c.id == wanted), None)
    if card is None:
        raise UnknownModel(model_id)
    return card.model_copy(update={"id": model_id})


async def _cards(engine: Engine, adapters: AdapterManager, registry: AdapterRegistry, started: int) -> list[ModelCard]:
    loaded = engine.adapters()
    active_root = str(loaded.get(adapters.active, engine.model_id))
    active_parent = engine.model_id if adapters.active else None
    cards = [ModelCard(id=alias, created=started, root=active_root, parent=active_parent)
             for alias in dict.fromkeys((engine.model_id, "r3"))]  # the served id may be "r3" itself
    for scenario, active in sorted(adapters.actives.items()):
        if scenario != DEFAULT_SCENARIO:
            cards.append(ModelCard(id=scenario, created=started, root=str(loaded.get(active, engine.model_id)),
                                   parent=engine.model_id if active else None))
    cards.append(ModelCard(id="base", created=started, root=engine.model_id))
    cards += [ModelCard(id=name, created=started, root=str(loaded[name]), parent=engine.model_id)
              for name in sorted(adapters.static_adapters)]
    # Any recorded version can be pinned (loaded on demand), not only the loaded ones.
    cards += [ModelCard(id=model_name(v.name), created=_unix(v.created_at), root=str(v.path), parent=engine.model_id)
              for v in await registry.versions(None) if v.servable]
    return cards


def _unix(moment: datetime) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())  # SQLite's are naive UTC
