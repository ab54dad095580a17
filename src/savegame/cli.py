"""The ``savegame`` command.

The library raises typed errors; this module is the only place that turns them into messages
and exit codes: 0 done, 1 failure, 2 user error (bad URL, missing session, bad flag).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="savegame",
    help="Inspect, move and clean up saved agent, team and workflow sessions.",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    """Entry point of the console script."""
    app()
