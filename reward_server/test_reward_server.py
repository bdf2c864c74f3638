"""Check a running reward server (health, then two scored edits); the code is :mod:`reward_server.health_check`.

    python reward_server/test_reward_server.py [--url http://127.0.0.1:12341] [--wait 600]

Exits non-zero on any problem. Kept under this name because it is the documented health check.
"""

import sys

if not __package__:  # run by path: see reward_server/script_bootstrap.py
    import script_bootstrap  # noqa: F401

from reward_server.health_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
