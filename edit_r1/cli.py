"""Command-line entry shared by ``scripts/train_nft_*.py``: flags -> config -> Trainer.

``--config path.py:name`` selects a named config (absl ``config_flags``); any key can then be
overridden, e.g. ``--config.train.learning_rate=1e-4``. Works under ``torchrun`` and as a plain
single process.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from edit_r1 import distributed
from edit_r1.config import ConfigError


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def make_main(default_config: str, model_family: str):
    """An absl ``main`` for one model family; ``default_config`` is used when --config is absent."""
    config_flags.DEFINE_config_file("config", default_config, "Training config: path/to/file.py:name.")

    def main(argv) -> None:
        del argv
        from edit_r1.data import DatasetError
        from edit_r1.trainer import Trainer, TrainingError

        config = flags.FLAGS.config
        if config.model_family != model_family:
            raise app.UsageError(
                f"this script trains model_family={model_family!r} but the config says "
                f"{config.model_family!r}; use the other train_nft_*.py script"
            )
        signal.signal(signal.SIGTERM, _interrupt)  # clean shutdown on the scheduler's SIGTERM too
        dist = distributed.init_distributed()
        code = 0
        try:
            Trainer(config, dist).run()
        except (ConfigError, TrainingError, DatasetError, FileNotFoundError) as error:
            print(f"[rank {dist.rank}] error: {error}", file=sys.stderr)
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
