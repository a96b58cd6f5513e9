"""``GET /v1/models`` (the base model and each adapter on it), ``POST /v1/adapters`` and
``DELETE /v1/adapters/{name}``.

Over HTTP, adapters load only from ``--adapter-dir``: the path is resolved (symlinks followed)
and refused unless it lies inside that folder, and so is a folder holding a link that points out
of it. The engine is then given the resolved path, so a link swapped after the check is not
followed again at the top level.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request

from kernel_core.errors import AdapterInUseError, AdapterLoadError, InvalidRequestError, UnknownAdapterError
from kernel_core.server import errors
from kernel_core.server.protocol import LoadAdapterRequest, ModelCard, ModelList
from kernel_core.server.state import LoadedAdapter, ServerState

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    state: ServerState = request.app.state.kcore
    base = state.settings.model_name
    cards = [ModelCard(id=base, created=state.created, root=base, max_model_len=state.engine.engine.max_model_len)]
    cards += [ModelCard(id=a.name, created=a.created, root=a.path, parent=base) for a in state.adapters.values()]
    return ModelList(data=cards)


@router.post("/v1/adapters")
async def load_adapter(body: LoadAdapterRequest, request: Request) -> ModelCard:
    state: ServerState = request.app.state.kcore
    root = state.settings.adapter_dir
    if root is None:
        raise errors.bad_request("loading adapters over HTTP is off: start the server with --adapter-dir", param="path")
    if state.engine.engine.adapters is None:
        raise errors.bad_request("adapter serving is not enabled on this server (enable_lora)", param="name")
    if body.name == state.settings.model_name or body.name in state.adapters:
        raise errors.bad_request(f"the name `{body.name}` is already served; unload it first", param="name",
                                 code="name_in_use")
    folder = inside(root, body.path)
    try:
        await state.engine.load_adapter(body.name, folder)
    except AdapterLoadError as exc:
        raise errors.bad_request(str(exc), param="path") from None
    except (InvalidRequestError, ValueError) as exc:  # a bad name; serving off
        raise errors.bad_request(str(exc), param="name") from None
    state.adapters[body.name] = LoadedAdapter(body.name, str(folder))
    loaded = state.adapters[body.name]
    return ModelCard(id=loaded.name, created=loaded.created, root=loaded.path, parent=state.settings.model_name)


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, request: Request) -> dict:
    state: ServerState = request.app.state.kcore
    if name not in state.adapters:
        raise errors.APIError(404, f"no adapter `{name}` is loaded", param="name", code="model_not_found")
    try:
        await state.engine.unload_adapter(name)
    except (AdapterInUseError, UnknownAdapterError) as exc:
        raise errors.from_engine(exc, "name") from None
    del state.adapters[name]
    return {"id": name, "object": "model", "deleted": True}


def inside(root: Path, path: str) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved, if it is a folder inside ``root``
    whose entries do not link out of it; else a 400 naming ``path``."""
    base = root.resolve()
    try:
        folder = (base / path).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a link loop
        raise errors.bad_request(f"path `{path}` is not a usable path: {exc}", param="path") from None
    if not folder.is_relative_to(base):
        raise errors.bad_request(f"path `{path}` is outside the adapter folder", param="path", code="path_not_allowed")
    if not folder.is_dir():
        raise errors.bad_request(f"path `{path}` is not a folder in the adapter folder", param="path")
    for entry in folder.iterdir():
        if not entry.resolve().is_relative_to(base):
            raise errors.bad_request(
                f"path `{path}` holds `{entry.name}`, a link out of the adapter folder", param="path",
                code="path_not_allowed",
            )
    return folder
