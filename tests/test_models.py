"""The models: OpenAIChat against a real HTTP server on loopback, and the offline model."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from savegame.agent import Agent
from savegame.models import (
    Model,
    ModelConnectionError,
    ModelHTTPError,
    ModelNotConfiguredError,
    ModelResponseError,
    configured_model,
    message,
    openai,
)
from savegame.models.offline import CHOOSE_ONE, OfflineModel
from savegame.models.openai import OpenAIChat
from savegame.storage.in_memory import InMemoryStorage
from tests.model_server import ModelServer, model_server

ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server() as running:
        yield running


@pytest.fixture(autouse=True)
def no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_openai_chat_sends_the_conversation_and_reads_the_answer(server: ModelServer) -> None:
    model = OpenAIChat(id="echo", api_key="sk-test", base_url=server.base_url, temperature=0.5)
    convo = [message("system", "be brief"), message("user", "hello")]
    response = model.respond(convo)
    assert response.content == "echo: hello [2 messages]"
    assert response.model == "echo"
    assert response.usage == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    sent = server.requests[-1]
    assert sent["body"] == {"model": "echo", "messages": convo, "temperature": 0.5}
    assert sent["headers"]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("tail", ["?api-version=2024-06-01", "/?api-version=2024-06-01"])
def test_a_base_url_with_a_query_keeps_it_after_the_path(server: ModelServer, tail: str) -> None:
    # Azure OpenAI's deployments are reached as .../openai/deployments/NAME?api-version=...
    model = OpenAIChat(id="echo", api_key="", base_url=server.base_url + tail)
    assert model.respond([message("user", "hi")]).content == "echo: hi [1 messages]"
    assert server.requests[-1]["path"] == "/v1/chat/completions?api-version=2024-06-01"


def test_openai_chat_reads_the_environment(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
    monkeypatch.setenv("OPENAI_MODEL", "from-env")
    model = configured_model()
    assert isinstance(model, OpenAIChat)
    assert model.respond([message("user", "hi")]).model == "from-env"
    assert "Authorization" not in server.requests[-1]["headers"]


@pytest.mark.parametrize(
    ("name", "status", "text"),
    [
        ("fail-500", 500, "the model fell over$"),
        ("fail-429", 429, r"slow down \(retry after 7 seconds\)$"),
        ("fail-503", 503, r"overloaded \(retry after \d+ seconds\)$"),
    ],
)
def test_an_error_status_raises_model_http_error(
    server: ModelServer, name: str, status: int, text: str
) -> None:
    with pytest.raises(ModelHTTPError, match=text) as caught:
        OpenAIChat(id=name, base_url=server.base_url).respond([message("user", "hi")])
    assert caught.value.status == status
    wait = caught.value.retry_after
    assert (wait, status) == (None, 500) or (wait == 7 and status == 429) or 20 < wait <= 31


@pytest.mark.parametrize(
    ("name", "status", "said"),
    [
        ("fail-502", 502, "502 Bad Gateway"),
        ("fail-404", 404, "Model 'fail-404' not found"),
        ("fail-400", 400, "This model's maximum context length is 4096 tokens."),
    ],
)
def test_the_error_of_another_server_or_of_a_proxy_is_told_in_its_own_words(
    server: ModelServer, name: str, status: int, said: str
) -> None:
    """A proxy's HTML page was told by its first line (``<html>``), and the JSON of servers
    that do not nest their message under ``error`` as raw JSON."""
    with pytest.raises(ModelHTTPError) as caught:
        OpenAIChat(id=name, base_url=server.base_url).respond([message("user", "hi")])
    assert str(caught.value) == f"model server answered {status}: {said}"


def test_a_wrong_path_raises_model_http_error_404(server: ModelServer) -> None:
    with pytest.raises(ModelHTTPError, match="404: no route /chat/completions") as caught:
        OpenAIChat(id="echo", base_url=server.base_url.removesuffix("/v1")).respond(
            [message("user", "hi")]
        )
    assert caught.value.status == 404


@pytest.mark.parametrize(("name", "status"), [("redirect", 301), ("redirect-307", 307)])
def test_a_redirect_is_not_followed(server: ModelServer, name: str, status: int) -> None:
    """Following it would send the key on (urllib keeps the Authorization header, to any
    host) and turn a 301's POST into a GET without the conversation."""
    model = OpenAIChat(id=name, api_key="sk-test", base_url=server.base_url)
    with pytest.raises(ModelHTTPError, match="redirected to /v1/moved/chat/completions") as caught:
        model.respond([message("user", "hi")])
    assert caught.value.status == status
    assert "sk-test" not in str(caught.value)
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"]


def test_the_api_key_is_sent_trimmed_and_never_shown(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key read from a file keeps its line break; http.client refused it with an error
    # that quoted the whole header.
    OpenAIChat(id="echo", api_key="sk-test\r\n", base_url=server.base_url).respond(
        [message("user", "hi")]
    )
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-test"
    with pytest.raises(ModelNotConfiguredError, match="the key is not shown") as caught:
        OpenAIChat(id="echo", api_key="sk-te st", base_url=server.base_url)
    assert "sk-te" not in str(caught.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret\x1b")
    with pytest.raises(ModelNotConfiguredError) as caught:
        configured_model()
    assert "sk-secret" not in str(caught.value)
    # An empty key given sends none, rather than the environment's to another server.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hosted")
    OpenAIChat(id="echo", api_key="", base_url=server.base_url).respond([message("user", "hi")])
    assert "Authorization" not in server.requests[-1]["headers"]
    assert "sk-hosted" not in repr(OpenAIChat())
    wrong = OpenAIChat(id="fail-401", api_key="sk-wrong-1234", base_url=server.base_url)
    with pytest.raises(ModelHTTPError) as failed:
        wrong.respond([message("user", "hi")])
    assert str(failed.value) == "model server answered 401: Incorrect API key provided: ***."
    assert "sk-wrong" not in failed.value.body
    # A short key, as local servers take any, is hidden where it is quoted, and only there.
    short = OpenAIChat(id="fail-401", api_key="k", base_url=server.base_url)
    with pytest.raises(ModelHTTPError) as failed:
        short.respond([message("user", "hi")])
    assert str(failed.value) == "model server answered 401: Incorrect API key provided: ***."
    short.id = "fail-400"
    with pytest.raises(ModelHTTPError) as failed:
        short.respond([message("user", "hi")])
    assert "maximum context length is 4096 tokens." in str(failed.value)


def test_a_user_and_password_in_the_base_url_are_sent_as_basic_auth_and_never_shown(
    server: ModelServer,
) -> None:
    url = server.base_url.replace("http://", "http://ada:pa%40ss@")
    model = OpenAIChat(id="echo", base_url=url)
    assert model.respond([message("user", "hi")]).content == "echo: hi [1 messages]"
    sent = server.requests[-1]["headers"]["Authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")) == b"ada:pa@ss"
    assert "pa%40ss" not in repr(model)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelConnectionError, match="refused") as caught:
        OpenAIChat(id="echo", base_url=f"http://ada:pw-1@127.0.0.1:{port}/v1").respond(
            [message("user", "hi")]
        )
    assert "pw-1" not in str(caught.value)
    assert "http://***@127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("name", ["drop", "partial"])
def test_a_dropped_connection_raises_model_connection_error(server: ModelServer, name: str) -> None:
    with pytest.raises(ModelConnectionError):
        OpenAIChat(id=name, base_url=server.base_url).respond([message("user", "hi")])


def test_a_server_that_does_not_answer_times_out(server: ModelServer) -> None:
    model = OpenAIChat(id="hang", base_url=server.base_url, timeout=0.3)
    with pytest.raises(ModelConnectionError, match="timed out"):
        model.respond([message("user", "hi")])


def test_an_answer_sent_slowly_times_out_when_the_request_has_taken_its_time(
    server: ModelServer,
) -> None:
    model = OpenAIChat(id="trickle", base_url=server.base_url, timeout=1)
    started = time.monotonic()
    with pytest.raises(ModelConnectionError, match="timed out"):
        model.respond([message("user", "hi")])
    assert time.monotonic() - started < 3
    slow_but_in_time = OpenAIChat(id="trickle", base_url=server.base_url, timeout=60)
    assert slow_but_in_time.respond([message("user", "hi")]).content == "echo: hi [1 messages]"


def test_a_refused_connection_raises_model_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelConnectionError, match=r"127\.0\.0\.1"):
        OpenAIChat(id="echo", base_url=f"http://127.0.0.1:{port}/v1").respond(
            [message("user", "hi")]
        )


def test_token_counts_of_an_odd_shape_are_left_out(server: ModelServer) -> None:
    answer = OpenAIChat(id="odd-usage", base_url=server.base_url).respond([message("user", "hi")])
    assert answer.content == "echo: hi [1 messages]"
    assert answer.usage == {}
    answer = OpenAIChat(id="bool-usage", base_url=server.base_url).respond([message("user", "hi")])
    assert answer.usage == {"total_tokens": 4}


def test_an_answer_nested_too_deep_to_decode_raises_a_model_error(server: ModelServer) -> None:
    with pytest.raises(ModelResponseError, match="not a chat completion"):
        OpenAIChat(id="deep", base_url=server.base_url).respond([message("user", "hi")])
    with pytest.raises(ModelHTTPError, match=r"answered 500: \[\[\[") as caught:
        OpenAIChat(id="deep-500", base_url=server.base_url).respond([message("user", "hi")])
    assert caught.value.status == 500
    storage = InMemoryStorage()
    agent = Agent(OpenAIChat(id="deep", base_url=server.base_url), storage, session_id="s")
    with pytest.raises(ModelResponseError):
        agent.run("hi")
    assert storage.read("s") is None


@pytest.mark.parametrize("url", ["http://[::1/v1", "http://localhost:port/v1"])
def test_a_malformed_base_url_is_refused_when_the_model_is_made(url: str) -> None:
    with pytest.raises(ModelNotConfiguredError, match="is not a URL"):
        OpenAIChat(id="echo", base_url=url)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("garbage", "not a chat completion"),
        ("error-200", "^the server answered with an error: quota exceeded$"),
        ("no-choices", r"^the server's answer has no choices \(an empty list\)$"),
        ("huge", "larger than 67108864 bytes"),
        ("huge-close", "larger than 67108864 bytes"),
    ],
)
def test_an_answer_that_is_not_a_completion_raises(
    server: ModelServer, name: str, text: str
) -> None:
    with pytest.raises(ModelResponseError, match=text):
        OpenAIChat(id=name, base_url=server.base_url).respond([message("user", "hi")])


def test_an_answer_in_parts_is_the_text_of_its_text_parts(server: ModelServer) -> None:
    # As some servers answer for a reasoning model; it was refused as not text.
    answer = OpenAIChat(id="parts", base_url=server.base_url).respond([message("user", "hi")])
    assert answer.content == "echo: hi [1 messages]"
    # A list of anything else is no text savegame can tell, and stays refused.
    for content in (["a", "b"], [{"text": "a"}], [{"type": "text", "text": 5}]):
        body = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        with pytest.raises(ModelResponseError, match="content is not text"):
            openai._parse(body, "m")


def test_an_answer_cut_short_by_the_token_limit_keeps_its_text(server: ModelServer) -> None:
    answer = OpenAIChat(id="length", base_url=server.base_url).respond([message("user", "hi")])
    assert answer.content == "echo: hi [1 messages]"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("refuse", "it refused: I can't help with that."),
        ("tool-call", r"it asked for tool calls \(get_weather\), which savegame does not make"),
        ("filtered", r"its content is null \(finish_reason: content_filter\)"),
        (
            "length-empty",
            r"it reached its token limit \(finish_reason: length\) before writing any",
        ),
        ("empty-tools", r"it asked for tool calls \(get_weather\), which savegame does not make"),
    ],
)
def test_an_answer_without_text_raises_and_the_agent_saves_nothing(
    server: ModelServer, name: str, why: str
) -> None:
    model = OpenAIChat(id=name, base_url=server.base_url)
    with pytest.raises(ModelResponseError, match=f"^the model gave no text: {why}$"):
        model.respond([message("user", "hi")])
    storage = InMemoryStorage()
    agent = Agent(model=model, storage=storage, session_id="s")
    with pytest.raises(ModelResponseError):
        agent.run("hi")
    assert storage.read("s") is None
    assert agent.runs == []


def test_an_agent_without_a_model_says_how_to_configure_one() -> None:
    assert configured_model() is None
    with pytest.raises(ModelNotConfiguredError) as caught:
        Agent()
    text = str(caught.value)
    assert "OPENAI_API_KEY" in text
    assert "OPENAI_BASE_URL" in text
    assert "OfflineModel" in text


def test_an_agent_uses_the_configured_model(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_MODEL", "echo")
    agent = Agent(add_history_to_messages=True, instructions="be kind")
    agent.run("one")
    assert agent.run("two").content == "echo: two [4 messages]"
    assert [m["role"] for m in server.requests[-1]["body"]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


def test_both_models_meet_the_protocol() -> None:
    assert isinstance(OfflineModel(), Model)
    assert isinstance(OpenAIChat(id="x", base_url="http://127.0.0.1:9/v1"), Model)


def test_offline_model_answers_from_the_history_it_is_given() -> None:
    model = OfflineModel()
    told = [message("user", "Hello, my name is Ada. My favourite colour is teal.")]
    told.append(message("assistant", model.respond(told).content))
    name = model.respond([*told, message("user", "What is my name?")])
    assert name.content.startswith("Your name is Ada.")
    assert "offline model" in name.content
    colour = model.respond([*told, message("user", "what's my favourite colour")])
    assert colour.content.startswith("Your favourite colour is teal.")
    forgot = model.respond([message("user", "What is my name?")])
    assert forgot.content.startswith("You have not told me your name.")


def test_offline_model_is_deterministic_and_counts_what_it_sees() -> None:
    convo = [
        message("user", "hi"),
        message("assistant", "hello"),
        message("user", "what did I say?"),
    ]
    first = OfflineModel().respond(convo)
    assert first == OfflineModel().respond(convo)
    assert first.content == 'You said: "hi". (offline model; 2 earlier messages in view)'
    assert first.usage["total_tokens"] > 0


def test_offline_model_can_choose_an_option() -> None:
    system = "\n".join(
        ["Members:", "- chef: cooking, recipes and food", "- coder: python programming", CHOOSE_ONE]
    )
    pick = OfflineModel().respond
    assert pick([message("system", system), message("user", "fix my python")]).content == "coder"
    assert pick([message("system", system), message("user", "a soup recipe")]).content == "chef"
    assert pick([message("system", system), message("user", "hello")]).content == "chef"


def test_the_proxy_of_the_environment_is_used_and_named_when_it_fails(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    root = server.base_url.removesuffix("/v1")
    monkeypatch.setenv("HTTP_PROXY", root)
    # The server, as the proxy, is asked for the whole URL: its answer shows that it was.
    with pytest.raises(ModelHTTPError, match=r"no route http://model\.invalid/v1/chat"):
        OpenAIChat(id="echo", base_url="http://model.invalid/v1").respond([message("user", "hi")])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://me:proxy-pw@127.0.0.1:{port}")
    proxied = OpenAIChat(id="echo", base_url=server.base_url)
    with pytest.raises(ModelConnectionError) as caught:
        proxied.respond([message("user", "hi")])
    text = str(caught.value)
    assert f"through the proxy http://***@127.0.0.1:{port} failed: ConnectionRefusedError" in text
    assert "proxy-pw" not in text
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert proxied.respond([message("user", "hi")]).content == "echo: hi [1 messages]"


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"base_url": "localhost:11434/v1"}, "must start with http:// or https://"),
        ({"base_url": "ftp://a:secret@host/v1"}, r"'ftp://\*\*\*@host/v1' must start with"),
        ({"timeout": 0}, "timeout must be more than 0 seconds, not 0"),
        ({"timeout": -1.5}, "not -1.5"),
    ],
)
def test_settings_that_cannot_work_are_refused_when_the_model_is_made(
    options: dict[str, Any], text: str
) -> None:
    with pytest.raises(ModelNotConfiguredError, match=text):
        OpenAIChat(id="echo", **options)
