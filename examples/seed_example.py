"""The storage chapter's example, steps 1 to 3, with savegame in place of the original."""

# storage_sqlite_example.py
from savegame.storage.sqlite import SqliteStorage
from savegame.storage.session.agent import AgentSession # What we'll save/load
import time

# 1. Initialize SqliteStorage for agent sessions
# This will create/use a file named 'my_agent_sessions.db'
agent_storage = SqliteStorage(
    table_name="my_chat_sessions",
    db_file="my_agent_sessions.db",
    mode="agent"  # We're storing AgentSession objects
)

# 2. Create the database table if it doesn't exist
agent_storage.create()

print("SqliteStorage initialized and table created (if it wasn't already).")

# storage_sqlite_example.py (continued)

# Simulate some session data
current_session_id = "chat_session_123"
current_user_id = "user_jane_doe"
agent_conversation_memory = {
    "history": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there! How can I help?"}
    ],
    "user_prefs": {"theme": "dark"}
}

# Create an AgentSession object
my_session_data = AgentSession(
    session_id=current_session_id,
    user_id=current_user_id,
    agent_id="helper_bot_v1",
    memory=agent_conversation_memory,
    agent_data={"model_name": "gpt-4o-mini"},
    session_data={"status": "active"},
    created_at=int(time.time()),
    updated_at=int(time.time())
)

# Save the session to the database
saved_session = agent_storage.upsert(my_session_data)

if saved_session:
    print(f"\nSession '{saved_session.session_id}' saved successfully.")
    print(f"It contains memory: {saved_session.memory}")
else:
    print("\nFailed to save session.")

# storage_sqlite_example.py (continued)

# Later... try to load the session we just saved
retrieved_session = agent_storage.read(session_id=current_session_id)

if retrieved_session:
    print(f"\nSuccessfully loaded session '{retrieved_session.session_id}'.")
    print(f"User ID: {retrieved_session.user_id}")
    print(f"Agent ID: {retrieved_session.agent_id}")
    print(f"Retrieved memory: {retrieved_session.memory}")
    # Now an Agent could use this 'retrieved_session.memory' to continue the conversation
else:
    print(f"\nCould not find session '{current_session_id}'.")
