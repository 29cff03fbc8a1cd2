"""LoRA adapters at run time, vLLM's API: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.

An adapter loaded here is served by its name (a request's `model`) at once, and listed by
/v1/models with the base model as its parent. The adapter is read in the engine's process
(these handlers only await its answer), so the event loop keeps serving meanwhile. Unloading
one that requests are using takes its name away at once; those requests finish with it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from tokenworks.serve.errors import APIError
from tokenworks.serve.protocol import ERROR_RESPONSES, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from tokenworks.serve.state import ServerState

router = APIRouter()


@router.post(
    "/v1/load_lora_adapter", response_class=PlainTextResponse, responses=ERROR_RESPONSES,
    summary="Load a LoRA adapter (PEFT directory) to serve under lora_name.",
)  # fmt: skip
async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request):
    state: ServerState = request.app.state.server
    state.check_open()
    name = body.lora_name
    if name == state.config.model_name:
        raise APIError(400, f"{name!r} is the base model's name; give the adapter another", param="lora_name")
    if name in state.engine.loras and not body.load_inplace:
        raise APIError(
            400, f"the LoRA adapter {name!r} is loaded already (load_inplace: true replaces it)", param="lora_name"
        )
    limit = state.engine.options.max_loras
    if name not in state.engine.loras and len(state.engine.loras) >= limit:
        raise APIError(400, f"{limit} LoRA adapters are loaded, this server's --max-loras: unload one first")
    try:
        await state.engine.load_lora(name, body.lora_path, replace=body.load_inplace)
    except ValueError as error:
        raise APIError(400, f"cannot load the LoRA adapter {name!r}: {error}", param="lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post(
    "/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=ERROR_RESPONSES,
    summary="Stop serving a LoRA adapter (requests using it finish first).",
)  # fmt: skip
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request):
    state: ServerState = request.app.state.server
    state.check_open()
    name = body.lora_name
    if name not in state.engine.loras:
        raise APIError(404, f"the LoRA adapter {name!r} is not loaded", param="lora_name", code="model_not_found")
    try:
        await state.engine.unload_lora(name)
    except ValueError as error:  # unloaded by another request meanwhile
        raise APIError(404, str(error), param="lora_name", code="model_not_found") from None
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
