"""Load test of a reward server (64 concurrent clients, valid and malformed requests, 60 s).

    python scripts/load_test_reward_server.py --model /path/to/judge          # starts its own server
    python scripts/load_test_reward_server.py --url http://127.0.0.1:12341 --pid 12345

The code and the full description are in ``reward_server/load_test.py``; results of a run on the
tiny judge are in ``docs/reward-server.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward_server.load_test import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
