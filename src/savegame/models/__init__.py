"""The models an agent talks to: a small protocol, the messages it takes, what it returns.

A model is anything with a ``respond(messages)`` method returning a :class:`ModelResponse`;
savegame ships two:

- :class:`savegame.models.openai.OpenAIChat` speaks the OpenAI chat-completions protocol over
  HTTP, so it reaches a hosted API as well as Ollama, vLLM or llama.cpp's server;
- :class:`savegame.models.offline.OfflineModel` answers without a network, deterministically,
  from the conversation it is given.

Model errors are not storage errors: a failed call says nothing about the store. They form a
tree of their own::

    ModelError
    ├── ModelNotConfiguredError   (ValueError)  no model given and none configured, or an
    │                                           API key that cannot be sent
    ├── ModelConnectionError                    refused, dropped or timed-out connection
    ├── ModelHTTPError                          the server answered with an error status or
    │                                           a redirect
    └── ModelResponseError                      the answer is not a chat completion, or has no
                                                text (a refusal, a tool call, a token limit
                                                reached first)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable


class Message(TypedDict):
    """One chat message, as the OpenAI protocol and the stored session both write it."""

    role: str
    content: str


def message(role: str, content: str) -> Message:
    """A message dict; a function so that every message in savegame has the same two keys."""
    return {"role": role, "content": content}


@dataclass
class ModelResponse:
    """What a model answered.

    Attributes:
        content: the assistant's text.
        model: the model that answered, as the server named it.
        usage: token counts (``input_tokens``, ``output_tokens``, ``total_tokens``) when the
            model reports them.
    """

    content: str
    model: str
    usage: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """What an :class:`savegame.agent.Agent` needs of a model.

    Attributes:
        id: the model's name, stored in the session's ``agent_data``.
        provider: who serves it (``"openai"``, ``"offline"``), stored beside ``id``.
    """

    id: str
    provider: str

    def respond(self, messages: list[Message]) -> ModelResponse:
        """Answers the conversation in ``messages`` (the last one is the user's).

        Raises:
            ModelError: when no answer could be had; nothing else.
        """
        ...


class ModelError(Exception):
    """Base class of the errors a model call raises."""


class ModelNotConfiguredError(ModelError, ValueError):
    """No model was given and the environment names none, or a model was given settings it
    cannot work with (an API key no HTTP header can carry)."""


class ModelConnectionError(ModelError):
    """The model's server could not be reached, or dropped the connection mid-answer."""


class ModelHTTPError(ModelError):
    """The model's server answered with an error status, or with a redirect (which is not
    followed).

    Attributes:
        status: the HTTP status code.
        body: the start of the response body, for the message.
        retry_after: the seconds the server asked to wait before trying again (its
            ``Retry-After``, sent with a 429 or a 503), or None when it said nothing.
    """

    def __init__(
        self, status: int, message: str, body: str = "", retry_after: float | None = None
    ) -> None:
        wait = "" if retry_after is None else f" (retry after {retry_after:.0f} seconds)"
        super().__init__(f"model server answered {status}: {message}{wait}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class ModelResponseError(ModelError):
    """The server answered 200 with something that is not a chat completion, or with a
    completion that holds no text: the model refused, or asked for a tool call."""


HOW_TO_CONFIGURE = (
    "no model given and none configured: pass model=OpenAIChat(...) or "
    "model=OfflineModel() (from savegame.models.openai / savegame.models.offline), or set "
    "OPENAI_API_KEY (a hosted API) or OPENAI_BASE_URL (any OpenAI-compatible server such as "
    "Ollama, e.g. http://localhost:11434/v1), with OPENAI_MODEL naming the model"
)


def configured_model() -> Model | None:
    """The model the environment configures (``OPENAI_API_KEY`` or ``OPENAI_BASE_URL``), or None.

    Raises:
        ModelNotConfiguredError: when what the environment configures cannot work (a base URL
            that is not http:// or https://, a key no HTTP header can carry).
    """
    if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        return None
    from savegame.models.openai import OpenAIChat

    return OpenAIChat()


def default_model() -> Model:
    """The configured model.

    Raises:
        ModelNotConfiguredError: when the environment configures none (the message says how
            to configure one), or one that cannot work.
    """
    model = configured_model()
    if model is None:
        raise ModelNotConfiguredError(HOW_TO_CONFIGURE)
    return model


def describe(model: Any) -> dict[str, str]:
    """``{"id": ..., "provider": ...}`` of a model, for the stored session."""
    return {
        "id": str(getattr(model, "id", type(model).__name__)),
        "provider": str(getattr(model, "provider", "unknown")),
    }


__all__ = [
    "HOW_TO_CONFIGURE",
    "Message",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelNotConfiguredError",
    "ModelResponse",
    "ModelResponseError",
    "configured_model",
    "default_model",
    "describe",
    "message",
]
