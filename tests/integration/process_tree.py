"""Which processes of a session are still alive (read from /proc), for tests that kill a run.

Use from a test module in tests/integration/ (its folder is on sys.path under pytest):

    from process_tree import session_members
"""

from __future__ import annotations

from pathlib import Path


def session_members(session: int) -> list[int]:
    """Pids of the live (not zombie) processes whose session id is ``session``: a launcher started
    with ``start_new_session=True`` has its own pid as the session id, so its workers are found
    even after the launcher is gone."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            members.append(int(stat.parent.name))
    return members
