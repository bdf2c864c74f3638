"""Start the Edit-R1 reward server; the command itself is :mod:`reward_server.cli`.

    python reward_server/reward_server.py --backend transformers --model /path/to/judge
    python -m reward_server --backend transformers --model /path/to/judge   # the same

``--help`` lists every option; deployments are in ``docs/reward-server.md``.
"""

if not __package__:  # run by path: see reward_server/script_bootstrap.py
    import script_bootstrap  # noqa: F401

from reward_server.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
