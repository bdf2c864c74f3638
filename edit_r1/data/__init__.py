"""Data: the jsonl edit dataset and the distributed k-repeat group sampler (SPEC 1.1)."""

from .dataset import EditDataset as EditDataset
from .sampler import GroupBatchSampler as GroupBatchSampler
from .sampler import NotEnoughGroupsError as NotEnoughGroupsError
