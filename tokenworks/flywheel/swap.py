"""Hot swap: put a registered version behind a served name on a serving endpoint, or take one off.

The endpoint is a `tokenworks serve` (one server, or the router in front of a fleet, which passes
the call to every worker) or vLLM: all answer `POST /v1/load_lora_adapter` with `load_inplace`,
which swaps the adapter behind the name as one step per worker, so requests in flight finish
with the old version and none fails. Only LoRA adapters can be swapped so: a base checkpoint is
what a server was started on, and putting another one behind a name means a restart.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from tokenworks.errors import TokenworksError
from tokenworks.flywheel.registry import ModelVersion

TIMEOUT_S = 120.0  # a fleet loads the adapter on every worker before it answers


class SwapError(TokenworksError):
    """The endpoint could not be reached or refused to load or unload the adapter."""


def check_swappable(version: ModelVersion) -> None:
    """SwapError unless the version is a LoRA adapter (checked before anything is recorded)."""
    if version.kind != "lora":
        raise SwapError(
            f"version {version.version} ({version.name}) is a base checkpoint, not a LoRA adapter: it cannot be put "
            "behind a served name while serving; restart the server on it (`tokenworks serve "
            f"{version.path}`), or leave out --serve"
        )


def serve_version(url: str, served_name: str, version: ModelVersion, api_key: str | None = None) -> str:
    """Load the version's adapter behind `served_name`, replacing what was there; the endpoint's answer."""
    check_swappable(version)
    return load_adapter(url, served_name, version.path, api_key)


def load_adapter(url: str, name: str, path: str, api_key: str | None = None) -> str:
    return _post(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path, "load_inplace": True}, api_key)


def unload_adapter(url: str, name: str, api_key: str | None = None) -> str:
    return _post(url, "/v1/unload_lora_adapter", {"lora_name": name}, api_key)


def served_models(url: str, api_key: str | None = None) -> list[dict[str, Any]]:
    """The endpoint's /v1/models entries (base models have no parent; adapters name theirs)."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/models", headers=_headers(api_key))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
        raise SwapError(f"cannot list the models of {url}: {error}") from None


def base_model_name(url: str, api_key: str | None = None) -> str:
    """The name the endpoint serves its base model under."""
    for model in served_models(url, api_key):
        if not model.get("parent"):
            return model["id"]
    raise SwapError(f"{url} lists no base model in /v1/models")


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _post(url: str, route: str, body: dict[str, Any], api_key: str | None) -> str:
    request = urllib.request.Request(
        url.rstrip("/") + route, json.dumps(body).encode(), _headers(api_key), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):  # an OpenAI error object, else the raw text
            detail = json.loads(detail)["error"]["message"]
        raise SwapError(f"{url}{route} answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise SwapError(f"cannot reach {url}: {error}") from None
