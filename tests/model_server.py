"""A chat-completions server on loopback, for testing the OpenAI-compatible model for real.

It speaks enough of the protocol for :class:`savegame.models.openai.OpenAIChat`, and the model
name in the request chooses how it behaves:

=============  ==========================================================================
``echo``       200 with ``echo: <last user message> [<n> messages]`` (any other name too)
``fail-500``   500 with an OpenAI-style error body
``fail-429``   429 (rate limited)
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
=============  ==========================================================================
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
}
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

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            model = body.get("model")
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
            elif model == "fail-500":
                self._send(500, {"error": {"message": "the model fell over"}})
            elif model == "fail-429":
                self._send(429, {"error": {"message": "slow down"}})
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
                    model, ({"role": "assistant", "content": content}, "stop")
                )
                send = self._trickle if model == "trickle" else self._send
                send(
                    200,
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": USAGE.get(
                            model, {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
                        ),
                    },
                )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            self._raw(status, json.dumps(payload).encode())

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

        def _raw(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


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
