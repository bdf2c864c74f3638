"""Data: the jsonl edit dataset and the distributed k-repeat group sampler (SPEC 1.1)."""

from .dataset import EditDataset as EditDataset
from .dataset import EditItem as EditItem
from .sampler import GroupBatchSampler as GroupBatchSampler
from .sampler import NotEnoughGroupsError as NotEnoughGroupsError
