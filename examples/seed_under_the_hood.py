"""The storage chapter's look under the hood, its two code blocks as printed, with savegame in
place of the original. The second uses names the chapter imported earlier: run it after
seed_example.py."""

# Simplified from savegame.storage.base.py
from abc import ABC, abstractmethod
from typing import List, Optional, Literal
from savegame.storage.session import Session # Union of AgentSession, TeamSession, etc.

class Storage(ABC):
    def __init__(self, mode: Optional[Literal["agent", "team", "workflow"]] = "agent"):
        self._mode: Literal["agent", "team", "workflow"] = "agent" if mode is None else mode
        # ...

    @abstractmethod
    def upsert(self, session: Session) -> Optional[Session]:
        raise NotImplementedError

    @abstractmethod
    def read(self, session_id: str, user_id: Optional[str] = None) -> Optional[Session]:
        raise NotImplementedError
    # ... other abstract methods ...

# Highly simplified conceptual snippet from savegame.storage.sqlite.SqliteStorage
# from sqlalchemy import create_engine, Table, Column, String, JSON as SQLJSON
# from sqlalchemy.dialects import sqlite # For ON CONFLICT DO UPDATE
# from savegame.storage.session.agent import AgentSession

class SqliteStorageConceptual: # Not the real class name or full implementation
    def __init__(self, table_name, db_file, mode="agent"):
        self.table_name = table_name
        self.db_file = db_file
        self.mode = mode
        # self.engine = create_engine(f"sqlite:///{db_file}")
        # self.table = self._define_table_schema() # Defines columns
        print(f"Conceptual SqliteStorage for {mode}s in {db_file}:{table_name}")

    def _define_table_schema(self):
        # In reality, this defines SQLAlchemy columns for AgentSession fields
        # (session_id, user_id, agent_id, memory (as JSON), etc.)
        print("Defining table schema...")
        return "mock_table_object" # Placeholder

    def upsert(self, session: AgentSession) -> Optional[AgentSession]:
        # Conceptual: convert AgentSession to a dictionary
        session_dict = session.to_dict() 

        # Use SQLAlchemy to build an INSERT ... ON CONFLICT DO UPDATE statement
        # stmt = sqlite.insert(self.table).values(**session_dict)
        # stmt = stmt.on_conflict_do_update(...)
        # with self.engine.connect() as conn:
        #     conn.execute(stmt)
        #     conn.commit()
        print(f"UPSERTING session {session.session_id} to SQLite (conceptual)")
        return session # In reality, might re-read or update timestamps

    def read(self, session_id: str) -> Optional[AgentSession]:
        # Conceptual: Use SQLAlchemy to build a SELECT statement
        # stmt = select(self.table).where(self.table.c.session_id == session_id)
        # with self.engine.connect() as conn:
        #     result_row = conn.execute(stmt).fetchone()
        # if result_row:
        #     return AgentSession.from_dict(result_row._mapping)
        print(f"READING session {session_id} from SQLite (conceptual)")
        # Simulating finding the session we 'saved' earlier for this example
        if session_id == "chat_session_123":
            return AgentSession(session_id="chat_session_123", memory={"status": "loaded"})
        return None
