"""`GET /v1/models` and `GET /v1/models/{id}`: what a request may name in `model` (`HEAD` too, as
load balancers and health checkers probe them)."""

from __future__ import annotations

from fastapi import APIRouter

from r3.engines.base import Engine
from r3.store.registry import version_of
from server.adapters import AdapterManager
from server.auth import CheckedRoute
from server.deps import AdaptersDep, EngineDep, StartedDep
from server.errors import UnknownModel
from server.protocol import ModelCard, ModelList

router = APIRouter(route_class=CheckedRoute)


@router.get("/v1/models")
@router.head("/v1/models", include_in_schema=False)  # load balancers probe with HEAD
async def list_models(engine: EngineDep, adapters: AdaptersDep, started: StartedDep) -> ModelList:
    """The served id (the active adapter version on the base), "base", and every loaded adapter."""
    return ModelList(data=_cards(engine, adapters, started))


@router.get("/v1/models/{model_id:path}")
@router.head("/v1/models/{model_id:path}", include_in_schema=False)
async def retrieve_model(model_id: str, engine: EngineDep, adapters: AdaptersDep, started: StartedDep) -> ModelCard:
    """One of the models `GET /v1/models` lists (`client.models.retrieve`); any other id is a 404."""
    card = next((card for card in _cards(engine, adapters, started) if card.id == model_id), None)
    if card is None:
        raise UnknownModel(model_id)
    return card


def _cards(engine: Engine, adapters: AdapterManager, started: int) -> list[ModelCard]:
    loaded = engine.adapters()
    cards = [ModelCard(id=engine.model_id, created=started, root=str(loaded.get(adapters.active, engine.model_id)),
                       parent=engine.model_id if adapters.active else None),
             ModelCard(id="base", created=started, root=engine.model_id)]
    cards += [ModelCard(id=name, created=started, root=str(loaded[name]), parent=engine.model_id)
              for name in sorted(adapters.static_adapters)]
    cards += [ModelCard(id=name, created=started, root=str(loaded[version_of(name)]),
                        parent=engine.model_id) for name in adapters.served_models()]
    return cards
