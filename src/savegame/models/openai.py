"""A model served over the OpenAI chat-completions protocol.

Any server that speaks it works: the hosted API, Ollama (``http://localhost:11434/v1``), vLLM,
llama.cpp's server. It uses only the standard library's HTTP client, so it needs no extra.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any

from savegame.models import (
    Message,
    ModelConnectionError,
    ModelHTTPError,
    ModelResponse,
    ModelResponseError,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIChat:
    """Chat completions over HTTP.

    Every argument left as None is read from the environment: ``OPENAI_API_KEY``,
    ``OPENAI_BASE_URL`` (default: the hosted API) and ``OPENAI_MODEL`` (default
    ``gpt-4o-mini``). A local server usually needs no key.

    Args:
        id: the model name sent with each request.
        api_key: sent as a bearer token when set.
        base_url: the URL that ``/chat/completions`` is appended to.
        timeout: seconds to wait for the server, per request.
        temperature: sent when set.
        max_tokens: sent when set.
    """

    provider = "openai"

    def __init__(
        self,
        id: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.id = id or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens

    def respond(self, messages: list[Message]) -> ModelResponse:
        """Sends ``messages`` to ``{base_url}/chat/completions`` and returns the first choice.

        Raises:
            ModelHTTPError: the server answered with an error status (401, 429, 500...).
            ModelConnectionError: the server could not be reached, timed out, or dropped the
                connection before the answer was whole.
            ModelResponseError: the answer was not a chat completion.
        """
        payload: dict[str, Any] = {"model": self.id, "messages": messages}
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        return _parse(self._post("/chat/completions", payload), self.id)

    def _post(self, path: str, payload: dict[str, Any]) -> bytes:
        """The body of a successful POST; every transport failure mapped here, once."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            request = urllib.request.Request(
                self.base_url + path,
                data=json.dumps(payload).encode(),
                headers=headers,
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            text = _read_error_body(exc)
            raise ModelHTTPError(exc.code, _error_message(text) or exc.reason, text) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # URLError wraps refused connections and DNS failures; a connection dropped
            # mid-answer surfaces as RemoteDisconnected or IncompleteRead (HTTPException) or a
            # reset (OSError); a timeout as socket.timeout (an OSError); a malformed base
            # URL as ValueError.
            reason = getattr(exc, "reason", exc)
            kind = "timed out" if isinstance(reason, socket.timeout) else "failed"
            raise ModelConnectionError(
                f"request to {self.base_url}{path} {kind}: {type(reason).__name__}: {reason}"
            ) from exc

    def __repr__(self) -> str:
        return f"OpenAIChat(id={self.id!r}, base_url={self.base_url!r})"


def _read_error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(4096).decode("utf-8", "replace")
    except (http.client.HTTPException, OSError):
        return ""


def _error_message(body: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, or its first line."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0][:200] if body.strip() else ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return body[:200]


def _parse(body: bytes, default_model: str) -> ModelResponse:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        model = str(data.get("model") or default_model)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}  # counts are extra: none is fine
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelResponseError(
            f"the server's answer is not a chat completion: {body[:200]!r}"
        ) from exc
    if not isinstance(content, str):
        raise ModelResponseError(f"the completion's content is not text: {content!r}")
    counts = {
        "input_tokens": usage.get("prompt_tokens"),
        "output_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }
    return ModelResponse(
        content=content,
        model=model,
        usage={k: v for k, v in counts.items() if isinstance(v, int)},
    )
