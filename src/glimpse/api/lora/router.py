"""The LoRA adapter routes; admission requires the ``admin`` scope, given explicitly (``api.admission``)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Depends

from glimpse.api.errors import error_responses
from glimpse.api.security import authorize
from glimpse.api.state import AppState, StateDep
from glimpse.engine.protocol import AdapterPlacement, AdapterServing
from glimpse.errors import InvalidRequest

from .schemas import LoadLoraAdapterRequest, LoraAdapterObject, UnloadLoraAdapterRequest, UpstreamAnswer

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["lora"], dependencies=[Depends(authorize)])


def _adapters(state: AppState) -> AdapterServing:
    engine = state.engine
    if not isinstance(engine, AdapterServing):
        raise InvalidRequest("This server's engine does not serve LoRA adapters.", param="lora_name")
    return engine


def _answers(placements: Sequence[AdapterPlacement]) -> list[UpstreamAnswer]:
    return [
        UpstreamAnswer(upstream=p.server, ok=p.ok, status=p.status, message=p.message) for p in placements
    ]


@router.post("/load_lora_adapter", responses=error_responses(400, 401, 403, 413, 422, 502, 503))
async def load_lora_adapter(body: LoadLoraAdapterRequest, state: StateDep) -> LoraAdapterObject:
    """Read, check and start serving an adapter; a request names it as its ``model`` from now on."""
    info = await _adapters(state).load_adapter(body.lora_name, body.lora_path)
    return LoraAdapterObject(
        id=info.name,
        parent=info.parent,
        root=info.path,
        rank=info.rank,
        status="loaded",
        upstreams=_answers(info.placements),
    )


@router.post("/unload_lora_adapter", responses=error_responses(400, 401, 403, 404, 413, 422, 502, 503))
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, state: StateDep) -> LoraAdapterObject:
    """Stop taking requests for an adapter; the ones already running finish with it."""
    engine = _adapters(state)
    info = engine.adapter(body.lora_name)
    placements = await engine.unload_adapter(body.lora_name)
    parent, root, rank = (info.parent, info.path, info.rank) if info is not None else ("", "", 0)
    return LoraAdapterObject(
        id=body.lora_name,
        parent=parent,
        root=root,
        rank=rank,
        status="unloaded",
        upstreams=_answers(placements),
    )
