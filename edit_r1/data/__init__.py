"""Data: the jsonl edit dataset and the distributed k-repeat group sampler.

Groups: docs/algorithm.md#1-prompt-groups.
"""

from .dataset import DatasetError as DatasetError
from .dataset import EditDataset as EditDataset
from .dataset import check_source_counts as check_source_counts
from .sampler import GroupBatchSampler as GroupBatchSampler
from .sampler import NotEnoughGroupsError as NotEnoughGroupsError
