"""``python -m lit_psion session init-base|new|fork|run|list|show``: seed 000's branching sessions."""

from __future__ import annotations


def main(args: list[str]) -> None:
    from lit_psion.sessions.cli import session_main  # the sessions library, imported on use

    session_main(args)
