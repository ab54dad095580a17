"""The team saves its session and each member's, on every backend, and resumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from savegame.agent import Agent
from savegame.errors import CorruptSessionError, InvalidIdentifierError, SerializationError
from savegame.models import Message, ModelHTTPError, ModelResponse
from savegame.models.offline import OfflineModel
from savegame.runtime import SessionOwnerError
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.session import AgentSession, TeamSession
from savegame.team import Team
from savegame.testing import Store
from tests.runtime_helpers import new_session_after, run_worker
from tests.stores import Backend


@pytest.fixture
def stores(backend: Backend, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """An agent store for the members and a team store for the team, of one backend."""
    with (
        backend.make(tmp_path / "agents", "agent") as agents,
        backend.make(tmp_path / "teams", "team") as teams,
    ):
        yield agents, teams


def _team(stores: tuple[Store, Store], leader: object = None, **kwargs: object) -> Team:
    agents, teams = stores
    members = [
        Agent(
            OfflineModel(),
            agents(),
            name="chef",
            role="cooking, recipes and food",
            add_history_to_messages=True,
        ),
        Agent(
            OfflineModel(),
            agents(),
            name="coder",
            role="python programming and code",
            add_history_to_messages=True,
        ),
    ]
    return Team(members, leader or OfflineModel(), teams(), **kwargs)  # type: ignore[arg-type]


class Names:
    """A leader that answers in a sentence, as a chat model might."""

    id = "wordy"
    provider = "test"

    def respond(self, messages: list[Message]) -> ModelResponse:
        return ModelResponse("I would ask the coder about that.", self.id)


def test_the_leader_routes_and_every_session_is_saved(stores: tuple[Store, Store]) -> None:
    team = _team(stores, session_id="t1", user_id="ada", team_id="kitchen", name="Kitchen")
    code = team.run("How do I write a python loop?")
    soup = team.run("Give me a soup recipe.")
    assert (code.member, soup.member) == ("coder", "chef")
    agents, teams = stores
    stored = teams().read("t1")
    assert isinstance(stored, TeamSession)
    assert stored.team_id == "kitchen"
    assert stored.user_id == "ada"
    assert stored.team_data is not None
    assert [m["name"] for m in stored.team_data["members"]] == ["chef", "coder"]
    runs = stored.memory["runs"]  # type: ignore[index]
    assert [r["member"] for r in runs] == ["coder", "chef"]
    assert [r["content"] for r in runs] == [code.content, soup.content]
    member_sessions = stored.session_data["member_sessions"]  # type: ignore[index]
    for run in runs:
        member = agents().read(run["member_session_id"])
        assert isinstance(member, AgentSession)
        assert member.session_id == member_sessions[run["member"]]
        assert member.team_session_id == "t1"
        assert member.user_id == "ada"
        assert [r["run_id"] for r in member.memory["runs"]] == [run["member_run_id"]]  # type: ignore[index]


def test_a_team_made_again_resumes_its_members(stores: tuple[Store, Store]) -> None:
    team = _team(stores, session_id="t1", user_id="ada")
    team.run("My favourite food is soup, for cooking.")
    again = _team(stores, session_id="t1")
    assert again.user_id == "ada"
    assert len(again.runs) == 1
    assert again.member_sessions == team.member_sessions
    answer = again.run("What is my favourite food?")
    assert answer.member == "chef"
    assert answer.content.startswith("Your favourite food is soup")


def test_a_leader_answering_in_prose_is_understood(stores: tuple[Store, Store]) -> None:
    answer = _team(stores, leader=Names()).run("anything")
    assert answer.member == "coder"


class Down:
    """A leader whose model server is gone."""

    id = "down"
    provider = "test"

    def respond(self, messages: list[Message]) -> ModelResponse:
        raise ModelHTTPError(503, "unavailable")


def test_a_failed_leader_call_leaves_every_session_as_it_was(stores: tuple[Store, Store]) -> None:
    team = _team(stores, session_id="t1")
    team.run("a soup recipe")
    agents, teams = stores
    before = teams().read("t1"), sorted(agents().get_all_session_ids())
    team.model = Down()
    with pytest.raises(ModelHTTPError):
        team.run("python code")
    assert (teams().read("t1"), sorted(agents().get_all_session_ids())) == before
    assert len(team.runs) == 1


def test_a_team_state_the_store_cannot_hold_is_refused_before_any_member_answers(
    stores: tuple[Store, Store],
) -> None:
    team = _team(stores, session_id="t1", team_id="kitchen")
    team.run("Give me a soup recipe.")
    agents, teams = stores
    members_before = {sid: agents().read(sid) for sid in team.member_sessions.values()}
    team_before = teams().read("t1")
    team.session_state["tried"] = {"soup"}
    with pytest.raises(SerializationError, match=r"\['session_state'\]\['tried'\]: a set"):
        team.run("Give me a soup recipe.")
    with pytest.raises(TypeError, match="message must be a str"):
        team.run(None)  # type: ignore[arg-type]
    # No member saved a turn that the team's runs could not record.
    assert {sid: agents().read(sid) for sid in team.member_sessions.values()} == members_before
    assert teams().read("t1") == team_before
    team.session_state["tried"] = ["soup"]
    assert team.run("Give me a soup recipe.").member == "chef"
    stored = teams().read("t1")
    assert [r["member"] for r in stored.memory["runs"]] == ["chef", "chef"]  # type: ignore[union-attr]
    chef = agents().read(team.member_sessions["chef"])
    assert len(chef.memory["runs"]) == 2  # type: ignore[union-attr]


def test_members_need_distinct_names() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        Team([Agent(OfflineModel(), name="a"), Agent(OfflineModel(), name="a")], OfflineModel())
    with pytest.raises(ValueError, match="at least one member"):
        Team([], OfflineModel())


def test_members_need_a_name_or_an_agent_id() -> None:
    # Keyed by a made-up id, a member's conversation would be lost to a team made again.
    with pytest.raises(ValueError, match="needs a name \\(or an agent_id\\)"):
        Team(members=[Agent(model=OfflineModel())], model=OfflineModel())
    team = Team(members=[Agent(model=OfflineModel(), agent_id="chef")], model=OfflineModel())
    assert list(team.members) == ["chef"]


def test_a_new_team_session_gives_members_new_sessions(stores: tuple[Store, Store]) -> None:
    team = _team(stores)
    team.run("a soup recipe")
    before = dict(team.member_sessions)
    team.new_session()
    assert set(team.member_sessions.values()).isdisjoint(before.values())
    assert team.members["chef"].runs == []


def test_a_team_made_without_a_name_takes_none_from_one_session_to_the_next(
    stores: tuple[Store, Store],
) -> None:
    _team(stores, session_id="named", name="kitchen").run("a soup recipe")
    team = _team(stores)
    made = new_session_after(team, "named", {"name": "kitchen"}, lambda: team.run("a soup"))
    assert made["team_data"]["name"] is None


def test_two_teams_starting_one_session_at_once_share_each_members_session(
    stores: tuple[Store, Store],
) -> None:
    # Two processes make the team on a session not stored yet, before either has run it:
    # each member must answer in one session, or a team made again sees half its turns.
    first = _team(stores, session_id="t")
    second = _team(stores, session_id="t")
    first.run("My favourite recipe is pho.")
    second.run("a soup recipe")
    assert first.member_sessions == second.member_sessions
    again = _team(stores, session_id="t")
    assert len(again.members["chef"].runs) == 2
    assert "pho" in again.run("What is my favourite recipe?").content


def test_teams_stored_apart_with_one_session_id_keep_their_members_apart(
    backend: Backend, tmp_path: Path
) -> None:
    # Member session ids derive from the team session's id: two teams in two stores that
    # share their members' store, each with a session "chat-1", must not share them.
    with (
        backend.make(tmp_path / "agents", "agent") as agents,
        backend.make(tmp_path / "teams", "team") as teams,
        backend.make(tmp_path / "other-teams", "team") as other_teams,
    ):
        kitchen = _team((agents, teams), session_id="chat-1", team_id="kitchen")
        bakery = _team((agents, other_teams), session_id="chat-1", name="Bakery")
        kitchen.run("My favourite recipe is pho.")
        bakery.run("a soup recipe")
        assert set(kitchen.member_sessions.values()).isdisjoint(bakery.member_sessions.values())
        assert len(kitchen.members["chef"].runs) == len(bakery.members["chef"].runs) == 1
        assert bakery.delete_session()
        assert agents().read(kitchen.member_sessions["chef"]) is not None


@pytest.mark.parametrize("current", [True, False], ids=["current", "another"])
def test_deleting_a_team_session_deletes_its_members_sessions(
    stores: tuple[Store, Store], current: bool
) -> None:
    # Member session ids derive from the team session's: a team session made again with the
    # id of a deleted one would find the deleted conversation, were the members' left.
    team = _team(stores, session_id="t")
    team.run("My favourite recipe is pho.")
    team.run("How do I write a python loop?")
    linked = set(team.member_sessions.values())
    agents, teams = stores
    assert all(agents().read(sid) is not None for sid in linked)
    if not current:
        team.new_session()
    assert team.delete_session("t")
    assert teams().read("t") is None
    assert [agents().read(sid) for sid in linked] == [None, None]
    again = _team(stores, session_id="t")
    assert again.members["chef"].runs == []
    assert "pho" not in again.run("What is my favourite recipe?").content
    assert not team.delete_session("absent")


@pytest.mark.parametrize("gone", [False, True], ids=["team session there", "team session gone"])
def test_another_users_team_session_and_its_members_are_not_deleted(
    stores: tuple[Store, Store], gone: bool
) -> None:
    # Gone: Ada's team sessions were erased (or expired) and her members' not yet; Bob's
    # team, deleting that id, derives the same member sessions, which are still Ada's.
    adas = _team(stores, session_id="t", user_id="ada")
    adas.run("My favourite recipe is pho.")
    chefs = adas.member_sessions["chef"]
    agents, teams = stores
    if gone:
        assert teams().delete_session("t")
    bobs = _team(stores, user_id="bob")
    with pytest.raises(SessionOwnerError):
        bobs.delete_session("t")
    assert (teams().read("t") is None) == gone
    assert agents().read(chefs) is not None


def test_a_team_session_linking_members_oddly_is_corrupt(stores: tuple[Store, Store]) -> None:
    from savegame.errors import CorruptSessionError

    _, teams = stores
    teams().upsert(TeamSession(session_id="t", session_data={"member_sessions": ["chef"]}))
    with pytest.raises(CorruptSessionError, match="member_sessions"):
        _team(stores, session_id="t")


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("session_data", {"session_data": "text"}),
        ("team_data", {"team_data": ["kitchen"]}),
    ],
)
def test_a_team_session_of_another_shape_is_corrupt(
    stores: tuple[Store, Store], field: str, fields: dict[str, Any]
) -> None:
    _, teams = stores
    teams().upsert(TeamSession(session_id="t", **fields))
    with pytest.raises(CorruptSessionError, match=f"'t'.* {field} should be a dict"):
        _team(stores, session_id="t")


def test_a_new_process_resumes_the_team(backend: Backend, tmp_path: Path) -> None:
    with (
        backend.make(tmp_path / "agents", "agent") as agents,
        backend.make(tmp_path / "teams", "team") as teams,
    ):
        agents.require("processes")
        first = run_worker("team", agents.url, teams.url, "t", "My favourite recipe is pho.")
        assert first[0].startswith("chef\tNoted: your favourite recipe is pho.")
        second = run_worker("team", agents.url, teams.url, "t", "What is my favourite recipe?")
        assert second[0].startswith("chef\tYour favourite recipe is pho.")
        stored = teams().read("t")
        assert stored is not None
        assert len(stored.memory["runs"]) == 2  # type: ignore[attr-defined]


def test_a_team_killed_between_its_members_save_and_its_own_keeps_what_each_saved(
    backend: Backend, tmp_path: Path
) -> None:
    with (
        backend.make(tmp_path / "agents", "agent") as agents,
        backend.make(tmp_path / "teams", "team") as teams,
    ):
        agents.require("processes")
        urls = (agents.url, teams.url, "t")
        run_worker("team", *urls, "My favourite recipe is pho.")
        run_worker("team", *urls, "How do I cook rice?", kill_at="agent:saved:1")
        run_worker("team", *urls, "How do I cook rice?")
        run_worker("team", *urls, "How do I cook pasta?", kill_at="team:save:1")
        run_worker("team", *urls, "What is my favourite recipe?")
        stored = teams().read("t")
        assert stored is not None
        team_runs = stored.memory["runs"]  # type: ignore[attr-defined]
        asked = ["My favourite recipe is pho.", "How do I cook rice?"]
        assert [r["input"] for r in team_runs] == [*asked, "What is my favourite recipe?"]
        chef_session = stored.session_data["member_sessions"]["chef"]  # type: ignore[index]
        chef = agents().read(chef_session)
        assert chef is not None
        assert chef.team_session_id == "t"  # type: ignore[attr-defined]
        # As documented: the turns the team did not record stay in the member's session.
        chef_runs = chef.memory["runs"]  # type: ignore[attr-defined]
        assert [r["input"] for r in chef_runs] == [
            *asked,
            "How do I cook rice?",
            "How do I cook pasta?",
            "What is my favourite recipe?",
        ]
        assert [r["member_run_id"] for r in team_runs] == [
            chef_runs[i]["run_id"] for i in (0, 2, 4)
        ]


def test_a_team_made_without_an_id_derives_member_sessions_from_a_loaded_sessions_id() -> None:
    # Two processes of one team session give a member the session the stored team id
    # derives, whether the team was made with that id or took it from the session it loaded.
    teams, agents = InMemoryStorage(mode="team"), InMemoryStorage(mode="agent")

    def crew(**kwargs: Any) -> Team:
        chef = Agent(OfflineModel(), agents, name="chef")
        return Team([chef], OfflineModel(), teams, name="crew", **kwargs)

    crew(team_id="kitchen", session_id="s").run("hello")
    given, loaded = crew(team_id="kitchen"), crew()
    assert given.load_session("s")
    assert loaded.load_session("s")
    assert loaded.team_id == "kitchen"
    assert loaded._member_session_id("s", "baker") == given._member_session_id("s", "baker")
    assert crew()._member_session_id("s", "baker") != given._member_session_id("s", "baker")


def test_a_member_session_that_cannot_be_loaded_leaves_the_team_as_it_was(
    stores: tuple[Store, Store],
) -> None:
    # Half switched, a member left on the session before would answer the new session's
    # messages in the old one's conversation, its history (another user's, say) in view.
    _team(stores, session_id="t1", user_id="ada").run("My favourite recipe is pho.")
    bobs = _team(stores, session_id="t2", user_id="bob")
    bobs.run("How do I write a python loop?")
    agents, _ = stores
    agents().upsert(
        AgentSession(session_id=bobs.member_sessions["chef"], user_id="bob", session_data="x")  # type: ignore[arg-type]
    )
    team = _team(stores)
    team.load_session("t1")
    before = team.member_sessions.copy(), {k: m.session_id for k, m in team.members.items()}
    with pytest.raises(CorruptSessionError, match="session_data"):
        team.load_session("t2")
    assert (team.session_id, team.user_id, len(team.runs)) == ("t1", "ada", 1)
    assert (team.member_sessions, {k: m.session_id for k, m in team.members.items()}) == before
    assert all(m.team_session_id == "t1" and m.user_id == "ada" for m in team.members.values())
    assert "pho" in team.run("What is my favourite recipe?").content
    coder = agents().read(bobs.member_sessions["coder"])
    assert coder is not None
    assert len(coder.memory["runs"]) == 1  # type: ignore[index]


def test_a_team_that_cannot_load_a_members_session_leaves_every_member_as_it_was(
    stores: tuple[Store, Store],
) -> None:
    agents, teams = stores
    stored = _team(stores, session_id="t2", user_id="bob")
    stored.run("How do I write a python loop?")
    agents().upsert(
        AgentSession(session_id=stored.member_sessions["coder"], session_data="x")  # type: ignore[arg-type]
    )
    chef = Agent(OfflineModel(), agents(), session_id="own-chef", name="chef", user_id="ada")
    coder = Agent(OfflineModel(), agents(), session_id="own-coder", name="coder")
    chef.run("My favourite recipe is pho.")
    with pytest.raises(CorruptSessionError, match="session_data"):
        Team([chef, coder], OfflineModel(), teams(), session_id="t2")
    assert (chef.session_id, chef.user_id, chef.team_session_id, len(chef.runs)) == (
        "own-chef",
        "ada",
        None,
        1,
    )
    assert (coder.session_id, coder.user_id, coder.team_session_id) == ("own-coder", None, None)
    chef.run("And my favourite drink is tea.")
    own = agents().read("own-chef")
    assert own is not None
    assert len(own.memory["runs"]) == 2  # type: ignore[index]
    chef.new_session()
    assert chef.user_id == "ada"


def test_a_team_as_a_member_is_refused_clearly() -> None:
    sub = Team([Agent(OfflineModel(), name="chef")], OfflineModel(), name="sub")
    with pytest.raises(TypeError, match="members are agents: a team in a team"):
        Team([sub, Agent(OfflineModel(), name="coder")], OfflineModel())  # type: ignore[list-item]


def test_a_team_session_is_linked_to_the_workflow_session_it_runs_in(
    stores: tuple[Store, Store],
) -> None:
    """TeamSession has a workflow_session_id, as AgentSession does, but a Team could not be
    given one: a team run inside a workflow was not linked to it, where an agent was."""
    team = _team(stores, session_id="t1", workflow_session_id="w1")
    assert team.workflow_session_id == "w1"
    team.run("Give me a soup recipe.")
    _, teams = stores
    stored = teams().read("t1")
    assert isinstance(stored, TeamSession)
    assert stored.workflow_session_id == "w1"
    again = _team(stores, session_id="t1")
    assert again.workflow_session_id == "w1"
    again.run("And a python loop?")
    stored = teams().read("t1")
    assert isinstance(stored, TeamSession)
    assert stored.workflow_session_id == "w1"
    # A session of its own, as for an agent: what was taken from "t1" is t1's.
    again.new_session()
    assert again.workflow_session_id is None


def test_members_sessions_are_linked_to_the_workflow_session_of_their_team(
    stores: tuple[Store, Store],
) -> None:
    """A team run inside a workflow links its own session to the workflow's, and so the
    sessions its members answer in, which are part of that run too."""
    agents, _ = stores
    team = _team(stores, session_id="t1", workflow_session_id="w1")
    answer = team.run("Give me a soup recipe.")
    stored = agents().read(team.member_sessions[answer.member or ""])
    assert isinstance(stored, AgentSession)
    assert (stored.team_session_id, stored.workflow_session_id) == ("t1", "w1")
    assert team.members["coder"].workflow_session_id == "w1"
    # Made again without the link, the team takes it from its session, and so do members.
    again = _team(stores, session_id="t1")
    assert again.members["chef"].workflow_session_id == "w1"
    again.run("And a python loop?")
    stored = agents().read(again.member_sessions["coder"])
    assert isinstance(stored, AgentSession)
    assert stored.workflow_session_id == "w1"
    # A new team session is no longer the workflow's, nor are its members' sessions.
    again.new_session()
    assert [m.workflow_session_id for m in again.members.values()] == [None, None]
    # A member made with a link of its own keeps it.
    own = Agent(OfflineModel(), agents(), name="chef", workflow_session_id="mine")
    team = Team([own], OfflineModel(), stores[1](), workflow_session_id="w1")
    team.run("Soup?")
    stored = agents().read(team.member_sessions["chef"])
    assert isinstance(stored, AgentSession)
    assert stored.workflow_session_id == "mine"


def test_a_member_moved_to_another_session_answers_in_its_teams_session(
    stores: tuple[Store, Store],
) -> None:
    """An agent that is a member of two teams, of two users, answers each team's messages
    in that team's member session; so does a member moved by a session call of its own."""
    agents, teams = stores
    chef = Agent(OfflineModel(), agents(), name="chef", add_history_to_messages=True)
    ada = Team([chef], OfflineModel(), teams(), session_id="A", user_id="ada", name="a")
    bob = Team([chef], OfflineModel(), teams(), session_id="B", user_id="bob", name="b")
    first = ada.run("My name is Ada.")
    assert first.messages[-1]["content"] == first.content
    stored = agents().read(ada.member_sessions["chef"])
    assert isinstance(stored, AgentSession)
    assert (stored.user_id, stored.team_session_id) == ("ada", "A")
    assert bob.run("What is my name?").content.startswith("You have not told me")
    assert ada.run("What is my name?").content.startswith("Your name is Ada.")
    stored = agents().read(bob.member_sessions["chef"])
    assert isinstance(stored, AgentSession)
    assert (stored.user_id, stored.team_session_id) == ("bob", "B")
    assert [r["input"] for r in stored.memory["runs"]] == ["What is my name?"]  # type: ignore[index]
    team_runs = teams().read("A").memory["runs"]  # type: ignore[union-attr]
    assert {r["member_session_id"] for r in team_runs} == {ada.member_sessions["chef"]}
    chef.new_session()
    assert ada.run("What is my name?").content.startswith("Your name is Ada.")
    assert chef.session_id == ada.member_sessions["chef"]


def test_leader_instructions_given_as_a_list_are_in_its_prompt() -> None:
    prompts: list[str] = []

    class Leader(OfflineModel):
        def respond(self, messages: list[Message]) -> ModelResponse:
            prompts.append(messages[0]["content"])
            return super().respond(messages)

    members = [Agent(OfflineModel(), name="chef", instructions=["Cook.", "Be brief."])]
    team = Team(members, model=Leader(), instructions=["Prefer the chef.", "Be quick."])
    team.run("what is for dinner?")
    assert "- Prefer the chef.\n- Be quick." in prompts[-1]
    assert "- chef: - Cook.\n- Be brief." in prompts[-1]
    with pytest.raises(TypeError, match="instructions must be a str or a list of str"):
        Team(members, model=Leader(), instructions=[1])  # type: ignore[list-item]


def test_deleting_an_empty_id_is_refused_rather_than_taken_for_the_current_team() -> None:
    agents, teams = InMemoryStorage(mode="agent"), InMemoryStorage(mode="team")
    chef = Agent(OfflineModel(), agents, name="chef", role="cooking")
    team = Team([chef], OfflineModel(), teams, session_id="t")
    team.run("My favourite recipe is pho.")
    with pytest.raises(InvalidIdentifierError, match="session id"):
        team.delete_session("")
    assert team.session_id == "t"
    assert teams.read("t") is not None
    assert agents.read(team.member_sessions["chef"]) is not None
