"""The teacher: any OpenAI-compatible endpoint, asked a logged request's prompt greedily.

Its answer is what flags.teacher_disagreement compares the served one with. Plain HTTP from the
standard library: `tokenworks flywheel flag` asks one prompt at a time, offline from serving.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tokenworks.errors import TokenworksError

DEFAULT_MAX_TOKENS = 64  # when the logged request named no limit


class TeacherError(TokenworksError):
    """The teacher could not be asked, or did not answer as OpenAI's API does."""


class Teacher:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 60.0):
        """`base_url`: the endpoint, with or without its /v1; `model`: the teacher's name for the
        model (default: the first of its GET /v1/models)."""
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.api_key, self.timeout_s = api_key, timeout_s
        self.model = model or self._first_model()

    def answer(self, endpoint: str, request: dict) -> str | None:
        """The teacher's greedy answer to a logged request (its first prompt), None when the
        request has no prompt a text API can repeat (token ids)."""
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_MAX_TOKENS
        if endpoint == "chat.completions":
            body = {"model": self.model, "messages": request["messages"], "max_tokens": limit, "temperature": 0}
            choice = self._post("/chat/completions", body)["choices"][0]
            return (choice.get("message") or {}).get("content") or ""
        prompt = request.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt and isinstance(prompt[0], str) else None
        if not isinstance(prompt, str):
            return None
        body = {"model": self.model, "prompt": prompt, "max_tokens": limit, "temperature": 0}
        return self._post("/completions", body)["choices"][0].get("text") or ""

    def _first_model(self) -> str:
        models = self._call(urllib.request.Request(self.base_url + "/models", headers=self._headers()))
        if not models.get("data"):
            raise TeacherError(f"the teacher at {self.base_url} lists no models: name one with --teacher-model")
        return models["data"][0]["id"]

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {**self._headers(), "Content-Type": "application/json"}
        return self._call(urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST"))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _call(self, request: urllib.request.Request) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise TeacherError(f"the teacher answered {error.code} to {request.full_url}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TeacherError(f"the teacher at {self.base_url} cannot be reached: {reason}") from None
        except ValueError as error:
            raise TeacherError(f"the teacher's answer from {request.full_url} is not JSON: {error}") from None
