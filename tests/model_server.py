"""A chat-completions server on loopback, for testing the OpenAI-compatible model for real.

It speaks enough of the protocol for :class:`savegame.models.openai.OpenAIChat`, and the model
name in the request chooses how it behaves:

=============  ==========================================================================
``echo``       200 with ``echo: <last user message> [<n> messages]`` (any other name too)
``fail-500``   500 with an OpenAI-style error body
``fail-401``   401 whose message quotes the bearer token it was sent, as some servers do
``fail-429``   429 (rate limited), with ``Retry-After: 7``
``fail-503``   503 with a ``Retry-After`` that is an HTTP date about 30 seconds ahead
``fail-502``   502 with the HTML page of a proxy in front of the server (nginx's)
``fail-404``   404 with FastAPI's error body, ``{"detail": ...}``
``fail-400``   400 with the error body of older vLLM, ``{"object": "error", "message": ...}``
``redirect``   301 to ``/v1/moved/chat/completions``, which answers as ``echo`` (GET too)
``redirect-307``  the same with a 307
``error-200``  200 with an error body instead of a completion
``no-choices`` 200 with an empty ``choices`` list
``huge``       as ``echo``, padded with spaces past :data:`MAX_ANSWER_BYTES`
``huge-close`` the same without a ``Content-Length``, ended by closing the connection
``length``     as ``echo``, cut short: ``finish_reason`` length
``length-empty``  200 with empty content, ``finish_reason`` length (the limit came first)
``empty-tools``   200 with empty content (not null) that calls the tool ``get_weather``
``drop``       closes the connection without answering
``partial``    sends headers and half the body, then closes
``garbage``    200 with a body that is not JSON
``odd-usage``  as ``echo``, with a ``usage`` that is a string, not an object
``bool-usage`` as ``echo``, with token counts that are booleans and floats
``deep``       200 with JSON nested deeper than Python's recursion limit
``deep-500``   500 with such a body
``hang``       answers nothing until the server stops
``trickle``    as ``echo``, a byte every 10 ms (about 3 s in all), or until the server stops
``refuse``     200 with a message whose content is null and whose ``refusal`` says why
``tool-call``  200 with a message whose content is null that calls the tool ``get_weather``
``filtered``   200 with a message whose content is null, ``finish_reason`` content_filter
``parts``      as ``echo``, the content a list of parts: a ``thinking`` part, then the text
               in two ``text`` parts
=============  ==========================================================================
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from savegame.models.openai import MAX_ANSWER_BYTES

NO_TEXT: dict[str, tuple[dict[str, Any], str]] = {
    "refuse": (
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        "stop",
    ),
    "tool-call": (
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        "tool_calls",
    ),
    "filtered": ({"role": "assistant", "content": None}, "content_filter"),
    "length-empty": ({"role": "assistant", "content": ""}, "length"),
}
NO_TEXT["empty-tools"] = ({**NO_TEXT["tool-call"][0], "content": ""}, "tool_calls")
"""The message and finish reason of the answers without text, by model name."""

USAGE: dict[str, Any] = {
    "odd-usage": "n/a",
    "bool-usage": {"prompt_tokens": True, "completion_tokens": 3.0, "total_tokens": 4},
}
"""The ``usage`` of the answers whose token counts are not all whole numbers, by model name."""


@dataclass
class ModelServer:
    """A running server: its base URL and every request it received."""

    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


def _handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read ``requests`` instead."""

        def do_GET(self) -> None:
            """What a client that turned a redirected POST into a GET reaches."""
            server.requests.append(
                {"path": self.path, "headers": dict(self.headers), "method": "GET", "body": None}
            )
            self._send(200, _completion("echo", {"role": "assistant", "content": "moved"}))

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append(
                {"path": self.path, "headers": dict(self.headers), "method": "POST", "body": body}
            )
            model = body.get("model")
            route = self.path.partition("?")[0]
            if route == "/v1/moved/chat/completions":
                self._send(200, _completion("echo", {"role": "assistant", "content": "moved"}))
            elif route != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
            elif model in ("redirect", "redirect-307"):
                self.send_response(301 if model == "redirect" else 307)
                self.send_header("Location", "/v1/moved/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif model == "fail-401":
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                self._send(401, {"error": {"message": f"Incorrect API key provided: {key}."}})
            elif model == "fail-500":
                self._send(500, {"error": {"message": "the model fell over"}})
            elif model == "fail-429":
                self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"})
            elif model == "fail-503":
                when = email.utils.formatdate(time.time() + 30, usegmt=True)
                self._send(503, {"error": {"message": "overloaded"}}, {"Retry-After": when})
            elif model == "fail-502":
                page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>"
                self._raw(502, f"{page}<center>nginx</center></body></html>".encode())
            elif model == "fail-404":
                self._send(404, {"detail": "Model 'fail-404' not found"})
            elif model == "fail-400":
                said = "This model's maximum context length is 4096 tokens."
                self._send(400, {"object": "error", "message": said, "type": "BadRequestError"})
            elif model == "error-200":
                self._send(200, {"error": {"message": "quota exceeded", "code": 429}})
            elif model == "no-choices":
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "choices": []})
            elif model in ("huge", "huge-close"):
                data = json.dumps(_completion("echo", {"role": "assistant", "content": "big"}))
                padded = data.encode() + b" " * MAX_ANSWER_BYTES
                self.close_connection = True
                try:
                    if model == "huge":
                        self._raw(200, padded)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(padded)
                except OSError:  # the client stopped reading
                    return
            elif model == "drop":
                self.close_connection = True
                self.connection.close()
            elif model == "partial":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"choices": [')
                self.wfile.flush()
                self.close_connection = True
                self.connection.close()
            elif model == "garbage":
                self._raw(200, b"<html>not a completion</html>")
            elif model in ("deep", "deep-500"):
                self._raw(200 if model == "deep" else 500, b"[" * 100_000 + b"]" * 100_000)
            elif model == "hang":
                server.stopping.wait(30)
            else:
                last = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                content = f"echo: {last} [{len(body['messages'])} messages]"
                message, finish = NO_TEXT.get(
                    model,
                    (
                        {"role": "assistant", "content": content},
                        "length" if model == "length" else "stop",
                    ),
                )
                if model == "parts":
                    thought = {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]}
                    halves = (content[:4], content[4:])
                    parts = [thought, *({"type": "text", "text": half} for half in halves)]
                    message = {"role": "assistant", "content": parts}
                send = self._trickle if model == "trickle" else self._send
                send(200, _completion(model, message, finish))

        def _send(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            self._raw(status, json.dumps(payload).encode(), headers)

        def _trickle(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
            started = time.monotonic()
            for at in range(len(data)):
                if server.stopping.wait(max(0.0, started + at * 0.01 - time.monotonic())):
                    return
                try:
                    self.wfile.write(data[at : at + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return

        def _raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _completion(model: str, message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE.get(model, {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}),
    }


@contextmanager
def model_server() -> Iterator[ModelServer]:
    """Starts the server on 127.0.0.1 (a free port) and stops it afterwards."""
    state = ModelServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
