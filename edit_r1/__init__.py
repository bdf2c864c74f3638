"""Edit-R1: DiffusionNFT post-training of instruction-based image-editing models.

The package is layered so that the mathematics never depends on the plumbing:

- ``edit_r1.sampling`` and ``edit_r1.algo`` are pure tensor code (schedules, solvers, NFT loss,
  advantages, group filtering, policy synchronisation);
- ``edit_r1.models`` holds one adapter per model family behind ``EditPolicy``, plus the tiny
  local model kit used by tests and the demo;
- ``edit_r1.rewards`` talks to the reward server and combines reward functions;
- ``edit_r1.trainer`` runs the epoch; ``edit_r1.distributed`` holds the torch.distributed glue.
"""

__version__ = "0.1.0"
