"""Base config of Edit-R1: every key at its shipped default.

Each key's default, checks and help text are written once, in the key table
``edit_r1/config_keys.py`` (``python -m edit_r1.config_keys`` prints them all, one line each:
``name = default  # why``); ``docs/configs.md#every-key`` is generated from it. Named configs
(``config/qwen_image_edit_nft.py``, ``config/kontext_nft.py``) start from ``get_config()`` here
and change only what differs. Every key can be overridden on the command line, e.g.
``--config.train.learning_rate=1e-4``. Keys documented as "0 = auto" are filled at start by
``edit_r1.config.apply_batch_plan`` from the real world size (docs/configs.md#batch-planning).

Sections: the top-level keys (run, checkpoints, precision, speed switches, model, algorithm,
rewards), ``pretrained.*`` (the checkpoint), ``sample.*`` (rollouts, evaluation sampling, group
filter), ``train.*`` (optimizer, loss constants, LoRA), ``reward_client.*`` (how the judge is
reached), ``monitors.*`` (reward-hacking monitors) and ``wandb.*``.
"""

import ml_collections

from edit_r1.config_keys import default_config


def get_config() -> ml_collections.ConfigDict:
    """All keys with their shipped defaults (docs/configs.md#every-key); named configs override a few."""
    return default_config()
