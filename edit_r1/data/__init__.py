"""Data: the jsonl edit dataset and the distributed k-repeat group sampler.

Groups: docs/algorithm.md#1-prompt-groups.
"""

from .dataset import EditDataset as EditDataset
from .sampler import GroupBatchSampler as GroupBatchSampler
from .sampler import NotEnoughGroupsError as NotEnoughGroupsError
