"""Command-line entry shared by ``scripts/train_nft_*.py``: flags -> config -> trainer.

``--config path.py:name`` selects a named config (absl ``config_flags``); any key can then be
overridden, e.g. ``--config.train.learning_rate=1e-4``. Works under ``torchrun`` and as a plain
single process.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from edit_r1 import distributed
from edit_r1.config import ConfigError, load_config

OVERRIDE_PREFIX = "--config."


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _config_spec(argv: Sequence[str], default_config: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return default_config


def _dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def unknown_override_keys(argv: Sequence[str], default_config: str) -> str | None:
    """One line naming the first ``--config.KEY`` override that the config lacks and the closest
    existing keys, or None when every override names a key (absl would end in a traceback)."""
    overrides = [
        arg[len(OVERRIDE_PREFIX) :].split("=", 1)[0] for arg in argv if arg.startswith(OVERRIDE_PREFIX)
    ]
    if not overrides:
        return None
    spec = _config_spec(argv, default_config)
    known = _dotted_keys(load_config(spec))
    for key in overrides:
        if key not in known:
            leaf_matches = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
            closest = list(
                dict.fromkeys(leaf_matches + difflib.get_close_matches(key, known, n=3, cutoff=0.5))
            )
            hint = f"; closest: {', '.join(closest[:4])}" if closest else ""
            return f"error: unknown config key {key!r} in {spec}{hint}"
    return None


def run(main, default_config: str, argv: Sequence[str] | None = None) -> None:
    """``app.run(main)`` after checking the ``--config.KEY`` overrides: an unknown key prints one
    line naming it and the closest keys, and exits with status 2 (no traceback)."""
    argv = list(sys.argv if argv is None else argv)
    problem = unknown_override_keys(argv[1:], default_config)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv)


def make_main(default_config: str, model_family: str):
    """An absl ``main`` for one model family; ``default_config`` is used when --config is absent."""
    config_flags.DEFINE_config_file("config", default_config, "Training config: path/to/file.py:name.")

    def main(argv) -> None:
        del argv
        from edit_r1.data import DatasetError
        from edit_r1.trainer import TrainingError, trainer_from_config

        config = flags.FLAGS.config
        if config.model_family != model_family:
            raise app.UsageError(
                f"this script trains model_family={model_family!r} but the config says "
                f"{config.model_family!r}; use the other train_nft_*.py script"
            )
        signal.signal(signal.SIGTERM, _interrupt)  # clean shutdown on the scheduler's SIGTERM too
        timeout_s = config.dist_timeout_s  # the process group exists before the config is checked
        if not isinstance(timeout_s, int | float) or not timeout_s > 0:
            raise app.UsageError(f"dist_timeout_s={timeout_s!r} must be a number of seconds > 0")
        dist = distributed.init_distributed(timeout_s=float(timeout_s))
        code = 0
        try:
            trainer_from_config(config, dist).run()
        except (ConfigError, TrainingError, DatasetError, FileNotFoundError) as error:
            print(f"[rank {dist.rank}] error: {error}", file=sys.stderr)
            code = 1
        except RuntimeError as error:  # a collective that timed out or lost a peer: say which
            message = distributed.describe_collective_failure(error, dist.rank, timeout_s)
            if message is None:
                raise
            print(message, file=sys.stderr, flush=True)  # first: a launcher may stop this rank soon
            absent = distributed.ranks_not_reporting(dist.rank, dist.world_size)
            if absent:
                print(f"[rank {dist.rank}] rank(s) {absent} never reached that collective (hung or dead: see "
                      "their logs)", file=sys.stderr, flush=True)  # fmt: skip
            code = 1
        except KeyboardInterrupt:
            distributed.rank0_print("interrupted: stopping (the last complete checkpoint is intact)")
            code = 130
        finally:
            distributed.shutdown()
        if code == 130:
            # Reward requests still in flight run on worker threads that the interpreter would
            # wait for at exit (up to the request time-out): leave now, as the signal asked.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)

    return main
