"""A model that needs no network: deterministic answers drawn from the conversation it is given.

It is for demos, tests and machines without a model server. It cannot reason, but it visibly
uses the history it receives, which is what a saved and resumed session must give it:

- "my NAME is VALUE" (name, favourite colour, anything) is remembered; "what is my NAME?"
  answers from the latest such statement anywhere in the messages it was sent;
- "what did I say?" repeats the user's previous message;
- anything else is echoed, with how many earlier messages it could see;
- a system message that lists options as ``- name: description`` lines and contains
  :data:`CHOOSE_ONE` gets the name of the option sharing most words with the user's message
  (the first on a tie), so it can lead a :class:`savegame.team.Team`.

Every answer says that it comes from the offline model.
"""

from __future__ import annotations

import re

from savegame.models import Message, ModelResponse

CHOOSE_ONE = "Answer with only the name of the one who should answer."
"""The sentence a routing prompt carries; models that follow instructions need nothing more."""

_STATEMENT = re.compile(r"\bmy\s+(?P<key>[a-z][\w' -]{0,40}?)\s+is\s+(?P<value>[^.!?\n]+)", re.I)
_QUESTION = re.compile(r"\bwhat(?:'s|\s+is)\s+my\s+(?P<key>[a-z][\w' -]{0,40}?)\s*\??\s*$", re.I)
_REPEAT = re.compile(r"\bwhat\s+did\s+i\s+(?:just\s+)?(?:say|ask)\b", re.I)
_OPTION = re.compile(r"^\s*-\s*(?P<name>[^:\n]+?)\s*:\s*(?P<description>.*)$", re.M)
_WORD = re.compile(r"[a-z0-9]+")


class OfflineModel:
    """Answers without a network; the same messages always give the same answer.

    Args:
        id: the name stored in the session's ``agent_data``.
    """

    provider = "offline"

    def __init__(self, id: str = "offline") -> None:
        self.id = id

    def respond(self, messages: list[Message]) -> ModelResponse:
        """Answers the last user message from the messages given; never raises."""
        users = [m["content"] for m in messages if m["role"] == "user"]
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        text = users[-1] if users else ""
        earlier = len(messages) - 1 - sum(1 for m in messages if m["role"] == "system")
        if CHOOSE_ONE in system:
            content = _choose(system, text)
        else:
            answer = _answer(text, users[:-1])
            content = f"{answer} (offline model; {earlier} earlier messages in view)"
        words = sum(len(m["content"].split()) for m in messages)
        out = len(content.split())
        return ModelResponse(
            content=content,
            model=self.id,
            usage={"input_tokens": words, "output_tokens": out, "total_tokens": words + out},
        )

    def __repr__(self) -> str:
        return f"OfflineModel(id={self.id!r})"


def _answer(text: str, earlier: list[str]) -> str:
    asked = _QUESTION.search(text)
    if asked:
        key = _key(asked["key"])
        for said in reversed(earlier):
            for found in reversed(list(_STATEMENT.finditer(said))):
                if _key(found["key"]) == key:
                    return f"Your {key} is {found['value'].strip()}."
        return f"You have not told me your {key}."
    if _REPEAT.search(text):
        return f'You said: "{earlier[-1]}".' if earlier else "This is the first thing you said."
    stated = list(_STATEMENT.finditer(text))
    if stated:
        last = stated[-1]
        return f"Noted: your {_key(last['key'])} is {last['value'].strip()}."
    return f'You said: "{text}".'


def _key(raw: str) -> str:
    return " ".join(raw.lower().split())


def _choose(system: str, text: str) -> str:
    options = [(m["name"], m["description"]) for m in _OPTION.finditer(system)]
    if not options:
        return "none"
    asked = _words(text)

    def overlap(option: tuple[str, str]) -> int:
        return len(asked & _words(f"{option[0]} {option[1]}"))

    best = max(options, key=overlap)  # max keeps the first of equals: ties go to the first
    return best[0]


def _words(text: str) -> set[str]:
    """The words of ``text`` long enough to say something (not "a", "is", "the"...)."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 3}
