"""A team of agents: a leader model picks the member that answers each message.

The team's :class:`~savegame.storage.session.team.TeamSession` is saved after every run: its
``memory["runs"]`` say who answered what, and ``session_data["member_sessions"]`` which agent
session holds each member's turns. Each member saves its turns in its own
:class:`~savegame.storage.session.agent.AgentSession` (in the member's own storage, mode
``"agent"``), whose ``team_session_id`` names the team session (and whose
``workflow_session_id`` names the team's workflow session, when it has one). A team made
again with the same session id resumes: its runs, its state, and every member's
conversation.

The member answers before the team saves: if the team's save fails, the member's turn is
stored and the team's record of it is not, and the error says so by propagating.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from savegame.agent import Agent, RunResponse, joined_instructions
from savegame.errors import CorruptSessionError
from savegame.models import Model, default_model, describe
from savegame.models import message as make_message
from savegame.models.offline import CHOOSE_ONE
from savegame.runtime import Run, SessionKeeper, list_messages, new_id
from savegame.storage.base import Storage


class Team(SessionKeeper):
    """Member agents and a leader that routes each message to one of them.

    Args:
        members: the agents; each needs a distinct ``name`` (or ``agent_id``), and its
            ``role`` tells the leader what it is for.
        model: the leader's model; when None, the model the environment configures.
        storage: a storage in mode ``"team"``; None keeps the team session in this object.
        session_id: the team session to resume or start.
        user_id: whose session it is; members' sessions get the same user.
        team_id: stored in the session's ``team_id``.
        name: the team's name, stored in ``team_data``; when None, each session loaded has
            the name stored with it, and a new session none.
        session_name: a name for the session.
        session_state: the state a new session starts with (resumed state wins).
        instructions: added to the leader's prompt; a list of them as for an
            :class:`~savegame.agent.Agent`.
        extra_data: stored as the session's ``extra_data``.
        workflow_session_id: links the session to the workflow session the team runs in
            (as :class:`~savegame.agent.Agent`'s does), and so the sessions its members
            answer in, but a member's made with a link of its own; a resumed session's own
            when None.

    Raises:
        ValueError: when there are no members or two share a name.
        TypeError: when a member is not an :class:`~savegame.agent.Agent` (a team, say),
            or ``instructions`` is neither a str nor a list of str.
        ModelNotConfiguredError: when ``model`` is None and no model is configured.
        SessionOwnerError: when ``session_id`` belongs to another ``user_id``.
        StorageError: when the stored team or member session cannot be read; every member
            is then left on the session it was on.
    """

    mode = "team"
    data_field = "team_data"
    made_with = ("name", "workflow_session_id")

    def __init__(
        self,
        members: Sequence[Agent],
        model: Model | None = None,
        storage: Storage | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
        name: str | None = None,
        session_name: str | None = None,
        session_state: dict[str, Any] | None = None,
        instructions: str | Sequence[str] | None = None,
        extra_data: dict[str, Any] | None = None,
        *,
        workflow_session_id: str | None = None,
    ) -> None:
        if not members:
            raise ValueError("a team needs at least one member")
        self.members: dict[str, Agent] = {}
        for member in members:
            if not isinstance(member, Agent):
                raise TypeError(
                    f"team members are agents: a team in a team is not supported, and "
                    f"{type(member).__name__} is not an Agent"
                )
            if not member.name and member.entity_id_made:
                raise ValueError(
                    "every team member needs a name (or an agent_id): a team made again "
                    "finds each member's conversation by it, and a made-up id is new each time"
                )
            key = member.name or member.agent_id or ""
            if key in self.members:
                raise ValueError(f"two team members are called {key!r}: give them distinct names")
            self.members[key] = member
        self.model: Model = model if model is not None else default_model()
        self.name = name
        self.instructions = joined_instructions(instructions)
        self.workflow_session_id = workflow_session_id
        self.member_sessions: dict[str, str] = {}
        self._members_ready = False
        super().__init__(
            storage, session_id, user_id, team_id, session_name, session_state, extra_data
        )
        self._members_ready = True
        # The members are the caller's: a team that cannot be made leaves them as they were.
        with self._unchanged_on_error():
            self._attach_members()

    @property
    def team_id(self) -> str | None:
        """The id stored in the session's ``team_id``."""
        return self.entity_id

    def run(self, message: str) -> RunResponse:
        """Lets the leader pick a member, has it answer, saves the team run, returns the answer.

        When the leader names no member, the first member answers; the run records it.

        The member answers in its session of this team session, also when it was moved
        to another session since (as a member of another team, say).

        Raises:
            TypeError: when ``message`` is not a str; nothing was sent or saved.
            SerializationError: when the message, or the team's ``session_state``, session
                name or ``extra_data``, holds what the store cannot hold, naming it;
                checked before the leader is called, so that no member saves a turn the
                team could not record. Nothing was sent or saved.
            ModelError: when the leader's or the member's model call failed; the team
                session is unchanged (and so is the member's, when its call failed).
            StorageError: when the member's session could not be read, or the member's or
                the team's run could not be saved.
        """
        self._check_storable(message)
        created_at = int(time.time())
        started = time.perf_counter()
        choice = self.model.respond(self._routing(message))
        name, routed = self._member_named(choice.content)
        answer = self._member_back(name).run(message)
        run: Run = {
            "run_id": new_id(),
            "created_at": created_at,
            "input": message,
            "content": answer.content,
            "member": name,
            "routed_by": routed,
            "leader_answer": choice.content,
            "member_run_id": answer.run_id,
            "member_session_id": answer.session_id,
            "messages": [make_message("user", message), make_message("assistant", answer.content)],
            "status": "completed",
            "metrics": {f"leader_{k}": v for k, v in choice.usage.items()},
        }
        self._save(run)
        return RunResponse(
            content=answer.content,
            run_id=run["run_id"],
            session_id=self.session_id,
            messages=answer.messages,
            model=answer.model,
            created_at=created_at,
            duration=time.perf_counter() - started,
            metrics=run["metrics"],
            member=name,
        )

    def new_session(self) -> str:
        """Starts a new team session; every member starts a new session of its own too.

        Raises:
            StorageError: when a member's session could not be read; the team and every
                member are left on the sessions they were on.
        """
        with self._unchanged_on_error():
            session_id = super().new_session()
            self._attach_members()
        return session_id

    def load_session(self, session_id: str | None = None) -> bool:
        """Loads the team session and, once members are known, each member's session.

        Raises:
            SessionOwnerError: when the team session belongs to another user.
            CorruptSessionError: when the team's or a member's session is of another shape.
            StorageError: when the team's or a member's session could not be read.

            On any error the team and every member are left on the sessions they were on.
        """
        if not self._members_ready:
            return super().load_session(session_id)
        with self._unchanged_on_error():
            loaded = super().load_session(session_id)
            self._attach_members()
        return loaded

    def delete_session(self, session_id: str | None = None) -> bool:
        """Deletes a stored team session and its members' sessions (default: the current
        one, which then starts afresh).

        The members' sessions go first: a team session made again with the same id would
        otherwise find their turns (their ids derive from it). Sessions of members that are
        no longer in the team are left, as their storage is unknown here.

        Returns:
            Whether there was such a team session.

        Raises:
            SessionOwnerError: when the team session, or a member's session of it, belongs
                to another user; nothing is deleted.
            InvalidIdentifierError: when ``session_id`` is one no store holds (``""``);
                nothing is deleted.
            StorageError: when a store could not be reached; what was deleted stays deleted.
        """
        session_id = self._named(session_id)
        if session_id == self.session_id:
            links = dict(self.member_sessions)
        else:
            links = {key: self._member_session_id(session_id, key) for key in self.members}
        stored = self._check_stored_owner(session_id)
        if stored is not None:
            links.update(_links(getattr(stored, "session_data", None)))
        stores = {
            sid: member.storage
            for key, sid in links.items()
            if (member := self.members.get(key)) is not None and member.storage is not None
        }
        self._check_members_owner(stores, switching=session_id != self.session_id)
        for member_session, storage in stores.items():
            storage.delete_session(member_session)
        return super().delete_session(session_id)

    def _check_members_owner(self, stores: dict[str, Storage], switching: bool) -> None:
        """Raises SessionOwnerError when a member session of ``stores`` (each in its
        member's storage) belongs to another user than the team session's: derived from
        the team session's id, it is another user's when that user's team session was
        deleted (erased, expired) and its members' were not yet.

        Raises:
            SessionOwnerError: naming the member session; nothing is deleted.
            StorageError: when a member's store could not be read.
        """
        if self._owner_to_check(switching) is None:
            return
        for member_session, storage in stores.items():
            found = storage.read(member_session)
            if found is not None:
                self._check_owner(found, switching)

    @contextlib.contextmanager
    def _unchanged_on_error(self) -> Iterator[None]:
        """Puts the team and its members back as they were when the block raises.

        Members switch one after another: a member left on the session before, once the
        team and the members before it had switched, would answer the new team session's
        messages in the old one's conversation, with its history (another user's, maybe)
        in view. The fields are taken back as they were (a switch replaces them rather
        than changing them), and ``session_state`` keeps its object, which a caller may
        hold, with its keys as they were.
        """
        keepers: list[SessionKeeper] = [self, *self.members.values()]
        saved = [(k, dict(vars(k)), k.session_state, dict(k.session_state)) for k in keepers]
        links = dict(self.member_sessions)
        try:
            yield
        except BaseException:
            for keeper, fields, state, keys in saved:
                vars(keeper).update(fields)
                state.clear()
                state.update(keys)
            self.member_sessions = links
            raise

    def _attach_members(self) -> None:
        for key in self.members:
            self._attach(key)

    def _attach(self, key: str) -> None:
        """Puts member ``key`` on its session of this team session, linked to the team's."""
        self.member_sessions[key] = self._member_sid(key)
        self.members[key].attach(
            self.member_sessions[key], self.session_id, self.user_id, self.workflow_session_id
        )

    def _member_sid(self, key: str) -> str:
        """The session member ``key`` answers in for this team session."""
        return self.member_sessions.get(key) or self._member_session_id(self.session_id, key)

    def _member_back(self, key: str) -> Agent:
        """Member ``key``, on the session it answers in for this team session: put back
        there when it was moved since (by another team it is a member of too, or by a
        ``load_session`` or ``new_session`` of its own), where it would answer this team's
        message in another conversation, another user's maybe.

        Raises:
            StorageError: when its session could not be read; the team and every member are
                then left as they were.
        """
        member = self.members[key]
        here = (member.session_id, member.team_session_id, member._initial_user)
        if here != (self._member_sid(key), self.session_id, self.user_id):
            with self._unchanged_on_error():
                self._attach(key)
        return member

    def _member_session_id(self, team_session_id: str, member: str) -> str:
        """The session member ``member`` answers in for a team session that names none.

        Derived rather than drawn at random, so that two processes starting one team session
        at once give each member the same session, not one each (the stored links would
        keep only one, and a team made again would see half the member's turns). The team's
        id (when given or stored, not made up here) or else its name is part of it, so that
        teams stored apart that share their members' storage and a session id do not share
        member sessions.
        """
        team = "" if self.entity_id == self._made_up_id else self.entity_id or ""
        name = "\x00".join((team_session_id, team or self.name or "", member))
        return str(uuid.uuid5(_MEMBER_SESSIONS, name))

    def _routing(self, message: str) -> list[Any]:
        lines = [f"You lead the team {self.name or self.team_id}. Its members:"]
        for key, member in self.members.items():
            lines.append(f"- {key}: {member.role or member.instructions or 'a member'}")
        if self.instructions:
            lines.append(self.instructions)
        lines.append(CHOOSE_ONE)
        return [make_message("system", "\n".join(lines)), make_message("user", message)]

    def _member_named(self, answer: str) -> tuple[str, str]:
        """The member the leader's answer names (the longest name it contains), and how."""
        text = answer.strip().lower()
        for key in self.members:
            if text == key.lower():
                return key, "leader"
        named = [key for key in self.members if key.lower() in text]
        if named:
            return max(named, key=len), "leader"
        return next(iter(self.members)), "first member: the leader named none"

    def _entity_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "team_id": self.entity_id,
            "model": describe(self.model),
            "members": [
                {"name": key, "agent_id": m.agent_id, "role": m.role}
                for key, m in self.members.items()
            ],
        }

    def _extend(self, data: dict[str, Any], run: Run | None) -> None:
        list_messages(data)
        session_data = data["session_data"]
        # Union, not replace: another process may have attached a member this one lacks.
        session_data["member_sessions"] = {**_links(session_data), **self.member_sessions}
        data["workflow_session_id"] = self.workflow_session_id or data.get("workflow_session_id")

    def _restored(self, data: dict[str, Any]) -> None:
        self.member_sessions = {**self.member_sessions, **_links(data.get("session_data"))}
        self.name = self.name or (data.get("team_data") or {}).get("name")
        self.workflow_session_id = self.workflow_session_id or data.get("workflow_session_id")

    def _reset(self) -> None:
        super()._reset()
        self.member_sessions = {}


def _links(session_data: Any) -> dict[str, str]:
    """The member sessions a stored team session links to, by member.

    Raises:
        CorruptSessionError: when the stored links are not a map of names to session ids.
    """
    links = session_data.get("member_sessions") if isinstance(session_data, dict) else None
    if links is None:
        return {}
    if not isinstance(links, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in links.items()
    ):
        raise CorruptSessionError(
            f"the team session's member_sessions is not a map of names to session ids: {links!r}"
        )
    return links


_MEMBER_SESSIONS = uuid.UUID("5b0d1a4e-2f7c-4c38-9a55-6d2f3e1b7a90")
"""Namespace of member session ids (any fixed UUID)."""
