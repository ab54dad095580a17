"""A model served over the OpenAI chat-completions protocol.

Any server that speaks it works: the hosted API, Ollama (``http://localhost:11434/v1``), vLLM,
llama.cpp's server. It uses only the standard library's HTTP client, so it needs no extra.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from types import TracebackType
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
        timeout: seconds to wait for the server, per request: connecting, sending and
            reading the whole answer, however slowly the server sends it.
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
            ModelResponseError: the answer was not a chat completion, or had no text (the
                model refused, or asked for a tool call).
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
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(_Handler(deadline))
        try:
            request = urllib.request.Request(
                self.base_url + path,
                data=json.dumps(payload).encode(),
                headers=headers,
                method="POST",
            )
            with deadline:
                try:
                    with opener.open(request, timeout=self.timeout) as response:
                        body: bytes = response.read()
                        return body
                except urllib.error.HTTPError as exc:
                    text = _read_error_body(exc)
                    raise ModelHTTPError(
                        exc.code, _error_message(text) or exc.reason, text
                    ) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # URLError wraps refused connections and DNS failures; a connection dropped
            # mid-answer surfaces as RemoteDisconnected or IncompleteRead (HTTPException) or a
            # reset (OSError); a timeout as socket.timeout (an OSError), from a socket or the
            # deadline; a malformed base URL as ValueError.
            reason = getattr(exc, "reason", exc)
            kind = "timed out" if isinstance(reason, socket.timeout) else "failed"
            raise ModelConnectionError(
                f"request to {self.base_url}{path} {kind}: {type(reason).__name__}: {reason}"
            ) from exc

    def __repr__(self) -> str:
        return f"OpenAIChat(id={self.id!r}, base_url={self.base_url!r})"


class _Deadline:
    """The time a request has, all of it: connecting, sending and reading the whole answer.

    A socket's timeout bounds each wait on its own, so a server that sends a byte now and
    then would hold a request for as long as it likes. When the time is up, the request's
    connections are shut down, which ends any wait on them, and leaving the ``with`` block
    raises TimeoutError, in place of whatever the request raised or returned (an answer
    read to the end of a connection shut down is cut short).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._state = "running"
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        """Shuts ``sock``'s connection down when the time is up (at once if it is)."""
        # A copy of the descriptor: TLS takes the socket's own away from its object
        # before its handshake, and closing it would let another socket take its number.
        copy = sock.dup()
        with self._lock:
            self._sockets.append(copy)
            if self._state == "expired":
                _shut_down(copy)

    def _expire(self) -> None:
        with self._lock:
            if self._state == "running":
                self._state = "expired"
                for sock in self._sockets:
                    _shut_down(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            expired = self._state == "expired"
            self._state = "over"
            for sock in self._sockets:
                sock.close()
        if expired:
            raise TimeoutError(f"no whole answer within {self.seconds:g} seconds") from exc


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the server closed it first
        sock.shutdown(socket.SHUT_RDWR)


class _Connection(http.client.HTTPConnection):
    """A connection whose socket a :class:`_Deadline` watches."""

    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _TLSConnection(http.client.HTTPSConnection, _Connection):
    """The same over TLS; :meth:`_Connection.connect` runs before the handshake."""


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens the connections of one request under its deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._watched(_Connection), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._watched(_TLSConnection), req)

    def _watched(self, kind: type[_Connection]) -> Callable[..., _Connection]:
        def connection(host: str, **options: Any) -> _Connection:
            made = kind(host, **options)
            made.deadline = self.deadline
            return made

        return connection


def _read_error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(4096).decode("utf-8", "replace")
    except (http.client.HTTPException, OSError):
        return ""


def _error_message(body: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, or its first line."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        return body.strip().splitlines()[0][:200] if body.strip() else ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return body[:200]


def _why_no_text(answer: dict[str, Any], choice: dict[str, Any]) -> str:
    """Why a completion whose content is null has none: the model's refusal, the tools it
    asked for (which savegame does not call), or else its finish reason."""
    refusal = answer.get("refusal")
    if refusal:
        return f"it refused: {refusal}"
    calls = answer.get("tool_calls")
    if isinstance(calls, list) and calls:
        functions = [call.get("function") if isinstance(call, dict) else None for call in calls]
        names = [str(f.get("name", "?")) if isinstance(f, dict) else "?" for f in functions]
        return f"it asked for tool calls ({', '.join(names)}), which savegame does not make"
    return f"its content is null (finish_reason: {choice.get('finish_reason')})"


def _parse(body: bytes, default_model: str) -> ModelResponse:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        answer = choice["message"]
        content = answer.get("content")
        model = str(data.get("model") or default_model)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}  # counts are extra: none is fine
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as exc:
        raise ModelResponseError(
            f"the server's answer is not a chat completion: {body[:200]!r}"
        ) from exc
    if content is None:
        raise ModelResponseError(f"the model gave no text: {_why_no_text(answer, choice)}")
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
        usage={k: v for k, v in counts.items() if type(v) is int},  # not True, not 1.0
    )
