"""A model served over the OpenAI chat-completions protocol.

Any server that speaks it works: the hosted API, Ollama (``http://localhost:11434/v1``), vLLM,
llama.cpp's server. It uses only the standard library's HTTP client, so it needs no extra.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import html
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any

from savegame.models import (
    Message,
    ModelConnectionError,
    ModelHTTPError,
    ModelNotConfiguredError,
    ModelResponse,
    ModelResponseError,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
MAX_ANSWER_BYTES = 64 * 2**20
"""The largest answer read: a whole context window of text is a few megabytes, and a server
that sends without end must not take all the memory of the process waiting for it."""
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
"""What an API key may hold: visible ASCII, which every HTTP header carries as it is."""
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


class OpenAIChat:
    """Chat completions over HTTP.

    Every argument left as None is read from the environment: ``OPENAI_API_KEY``,
    ``OPENAI_BASE_URL`` (default: the hosted API) and ``OPENAI_MODEL`` (default
    ``gpt-4o-mini``). A local server usually needs no key (``api_key=""`` sends none, whatever
    the environment holds). The key is never shown: not by ``repr`` nor in an error, and
    neither is a password in the base URL.

    Redirects are not followed: one would send the conversation, and the key, to another
    address than the one configured (and turn the POST into a GET). The server's 3xx answer
    raises :class:`~savegame.models.ModelHTTPError` naming where it points.

    Args:
        id: the model name sent with each request.
        api_key: sent as a bearer token when set; white space around it (a line break read
            from a file) is left out.
        base_url: the URL that ``/chat/completions`` is appended to. A user and password in
            it (``https://user:pass@host/v1``) are sent as basic authentication when no API
            key is.
        timeout: seconds to wait for the server, per request: connecting, sending and
            reading the whole answer, however slowly the server sends it.
        temperature: sent when set.
        max_tokens: sent when set.

    Raises:
        ModelNotConfiguredError: the API key holds a character no HTTP header can carry
            (the message does not show the key), the base URL is not an http:// or https://
            one or cannot be read as a URL, or the timeout is not more than 0.
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
        key = os.environ.get("OPENAI_API_KEY") if api_key is None else api_key
        key = key.strip() if key else None
        if key and not _HEADER_SAFE.fullmatch(key):
            raise ModelNotConfiguredError(
                "the API key holds a space, a control character or a character beyond ASCII, "
                "which no HTTP header carries (the key is not shown here)"
            )
        self.api_key = key or None
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        if not self.base_url.lower().startswith(("http://", "https://")):
            raise ModelNotConfiguredError(
                f"the base URL {_without_password(self.base_url)!r} must start with http:// "
                "or https:// (a local server: http://localhost:11434/v1, say)"
            )
        try:
            _ = urllib.parse.urlsplit(self.base_url).port  # reading the port checks it
        except ValueError as exc:
            raise ModelNotConfiguredError(
                f"the base URL {_without_password(self.base_url)!r} is not a URL: {exc}"
            ) from exc
        if not timeout > 0:
            raise ModelNotConfiguredError(f"timeout must be more than 0 seconds, not {timeout!r}")
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens

    def respond(self, messages: list[Message]) -> ModelResponse:
        """Sends ``messages`` to ``{base_url}/chat/completions`` and returns the first choice.

        Raises:
            ModelHTTPError: the server answered with an error status (401, 429, 500...), or
                with a redirect.
            ModelConnectionError: the server could not be reached, timed out, or dropped the
                connection before the answer was whole.
            ModelResponseError: the answer was not a chat completion, was larger than
                :data:`MAX_ANSWER_BYTES`, or had no text (the model refused, asked for a tool
                call, or reached its token limit before writing any).
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
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(_Handler(deadline), _NoRedirects())
        shown = _without_password(_joined(self.base_url, path))
        via = ""
        try:
            url, basic = _split_credentials(_joined(self.base_url, path))
            proxy = _proxy_for(url)
            via = f" through the proxy {_without_password(proxy)}" if proxy else ""
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            elif basic:
                headers["Authorization"] = f"Basic {basic}"
            request = urllib.request.Request(
                url, data=json.dumps(payload).encode(), headers=headers, method="POST"
            )
            with deadline:
                try:
                    with opener.open(request, timeout=self.timeout) as response:
                        return _read_at_most(response, MAX_ANSWER_BYTES, shown)
                except urllib.error.HTTPError as exc:
                    raise _http_error(exc, self.api_key) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # URLError wraps refused connections and DNS failures; a connection dropped
            # mid-answer surfaces as RemoteDisconnected or IncompleteRead (HTTPException) or a
            # reset (OSError); a timeout as socket.timeout (an OSError), from a socket or the
            # deadline; a malformed base URL as ValueError.
            reason = getattr(exc, "reason", exc)
            kind = "timed out" if isinstance(reason, socket.timeout) else "failed"
            why = str(reason) if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
            why = _without_password(why, self.base_url)
            raise ModelConnectionError(f"request to {shown}{via} {kind}: {why}") from exc

    def __repr__(self) -> str:
        return f"OpenAIChat(id={self.id!r}, base_url={_without_password(self.base_url)!r})"


def _joined(base_url: str, path: str) -> str:
    """``path`` added to the path of ``base_url``, before its query (Azure's
    ``?api-version=...``) and fragment, which would otherwise take it in."""
    parts = urllib.parse.urlsplit(base_url)
    return parts._replace(path=parts.path.rstrip("/") + path).geturl()


def _read_at_most(response: http.client.HTTPResponse, limit: int, shown: str) -> bytes:
    """The whole body of ``response``, unless it is longer than ``limit`` bytes.

    Raises:
        ModelResponseError: the body is longer.
        http.client.IncompleteRead: the connection ended before the length the server
            announced (``read(n)`` would return what came, silently).
    """
    too_large = ModelResponseError(
        f"the answer from {shown} is larger than {limit} bytes, more than any chat completion holds"
    )
    if response.length is not None:
        if response.length > limit:
            raise too_large
        return response.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(2**16):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _proxy_for(url: str) -> str | None:
    """The proxy that urllib sends a request for ``url`` through (``HTTP_PROXY``,
    ``HTTPS_PROXY``, unless ``NO_PROXY`` names the host), or None."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return str(proxy)


def _split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its user and password, and them as basic authentication (None when
    it has none): urllib would take them for part of the host name."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return parts._replace(netloc=host).geturl(), base64.b64encode(pair.encode()).decode("ascii")


def _without_password(text: str, url: str | None = None) -> str:
    """``text`` (``url``, or a message quoting it) with the user and password of ``url``
    written as ``***``; found by hand, as ``urlsplit`` refuses the malformed URLs that
    errors quote."""
    authority = (url if url is not None else text).partition("://")[2]
    authority = re.split(r"[/?#]", authority, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    return text.replace(f"{userinfo}@", "***@") if at and userinfo else text


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Leaves a redirect as the error it is for this client (see :class:`OpenAIChat`)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http_error(exc: urllib.error.HTTPError, api_key: str | None) -> ModelHTTPError:
    """The error of an answer with an error status; a server that quotes the key it was
    sent (a 401's "Incorrect API key provided: ...") has it shown as ``***``."""
    text = _without_key(_read_error_body(exc), api_key)
    if 300 <= exc.code < 400:
        where = exc.headers.get("Location") if exc.headers else None
        message = (
            f"redirected to {_without_password(where)}, which savegame does not follow "
            "(it would send the conversation and the API key there): set the base URL to "
            "where it points"
            if where
            else f"a redirect without a Location ({exc.reason})"
        )
        return ModelHTTPError(exc.code, message, text)
    retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
    return ModelHTTPError(
        exc.code, _error_message(text) or str(exc.reason), text, retry_after=retry_after
    )


def _without_key(text: str, api_key: str | None) -> str:
    """``text`` with ``api_key`` written as ``***`` wherever it stands apart from letters and
    digits: a short key (``x``, ``123``, as local servers take any) inside a word or a
    number is not the key quoted, and replacing it there would garble the message (``API
    ***ey``, ``4096 to***ens``)."""
    if not api_key:
        return text
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(api_key)}(?![A-Za-z0-9])", "***", text)


def _retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number of them, or an HTTP date),
    or None when there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


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
    """What an error body says: the ``error.message`` of an OpenAI-style one, the
    ``message`` or ``detail`` of the JSON other servers send (vLLM's, FastAPI's), the title
    of the HTML page a proxy sends (nginx's ``502 Bad Gateway``), or else its first line;
    "" for a page without a title, whose status's reason says more than its first line."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        if body.lstrip().startswith("<"):
            title = _HTML_TITLE.search(body)
            return " ".join(html.unescape(title.group(1)).split())[:200] if title else ""
        return body.strip().splitlines()[0][:200] if body.strip() else ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        said = data.get(key) if isinstance(data, dict) else None
        if isinstance(said, str) and said:
            return said
    return body[:200]


def _text_of(content: Any) -> Any:
    """A completion's ``content`` as text: a list of parts (as some servers send for a
    reasoning model: ``{"type": "thinking", ...}`` before ``{"type": "text", "text": ...}``)
    gives the text of its text parts, joined; other content, and a list holding anything
    but typed parts, comes back as it is."""
    if not isinstance(content, list) or not all(
        isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
    ):
        return content
    texts = [part.get("text") for part in content if part["type"] == "text"]
    return "".join(texts) if all(isinstance(text, str) for text in texts) else content


def _why_no_text(content: Any, answer: dict[str, Any], choice: dict[str, Any]) -> str | None:
    """Why a completion with ``content`` (as text, where it can be) has no text, or None
    when it has (an answer cut short by the token limit included), or its empty text is what
    the model meant to say: the model's refusal, the tools it asked for (which savegame does
    not call), the token limit it reached before writing any, or else its finish reason."""
    if not (content is None or isinstance(content, str)) or (content and content.strip()):
        return None
    refusal = answer.get("refusal")
    if refusal:
        return f"it refused: {refusal}"
    calls = answer.get("tool_calls")
    if isinstance(calls, list) and calls:
        functions = [call.get("function") if isinstance(call, dict) else None for call in calls]
        names = [str(f.get("name", "?")) if isinstance(f, dict) else "?" for f in functions]
        return f"it asked for tool calls ({', '.join(names)}), which savegame does not make"
    reason = choice.get("finish_reason")
    if reason == "length":
        return "it reached its token limit (finish_reason: length) before writing any"
    if content is None:
        return f"its content is null (finish_reason: {reason})"
    if reason not in (None, "stop"):
        return f"its content is empty (finish_reason: {reason})"
    return None


def _parse(body: bytes, default_model: str) -> ModelResponse:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ModelResponseError(
            f"the server's answer is not a chat completion: {body[:200]!r}"
        ) from exc
    if isinstance(data, dict) and "choices" not in data and data.get("error"):
        # Some servers and gateways answer 200 with the error of a failed call.
        message = _error_message(body.decode("utf-8", "replace"))
        raise ModelResponseError(f"the server answered with an error: {message}")
    if isinstance(data, dict) and data.get("choices") == []:
        raise ModelResponseError("the server's answer has no choices (an empty list)")
    try:
        choice = data["choices"][0]
        answer = choice["message"]
        content = _text_of(answer.get("content"))
        model = str(data.get("model") or default_model)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}  # counts are extra: none is fine
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelResponseError(
            f"the server's answer is not a chat completion: {body[:200]!r}"
        ) from exc
    why = _why_no_text(content, answer, choice)
    if why is not None:
        raise ModelResponseError(f"the model gave no text: {why}")
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
