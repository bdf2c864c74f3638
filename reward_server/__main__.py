"""``python -m reward_server``: start the reward server (see :mod:`reward_server.cli`)."""

from reward_server.cli import main

if __name__ == "__main__":
    main()
