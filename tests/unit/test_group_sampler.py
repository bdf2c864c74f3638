"""The distributed k-repeat group sampler (docs/algorithm.md#1-prompt-groups)."""

import json
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edit_r1.data import GroupBatchSampler, NotEnoughGroupsError


def keys(n):
    return [(f"instruction {i % 7}", f"img/{i}.png") for i in range(n)]


def samplers(group_keys, num_replicas, **kwargs):
    return [
        GroupBatchSampler(group_keys, num_replicas=num_replicas, rank=r, **kwargs)
        for r in range(num_replicas)
    ]


@settings(max_examples=40, deadline=None)
@given(
    num_replicas=st.integers(1, 4),
    batch_size=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3, 4, 6, 12]),
    epoch=st.integers(0, 5),
    seed=st.integers(0, 1000),
)
def test_ranks_cover_the_global_batch_disjointly_with_each_item_k_times(
    num_replicas, batch_size, k, epoch, seed
):
    assume((num_replicas * batch_size) % k == 0)
    ranks = samplers(keys(40), num_replicas, batch_size=batch_size, k=k, seed=seed, batches_per_epoch=2)
    for sampler in ranks:
        sampler.set_epoch(epoch)
    for draw in range(2):
        slices = [sampler.next_batch() for sampler in ranks]
        assert all(len(s) == batch_size for s in slices)
        combined = [index for s in slices for index in s]
        assert combined == ranks[0].global_batch(epoch, draw)
        counts = Counter(combined)
        assert len(counts) == num_replicas * batch_size // k
        assert set(counts.values()) == {k}


def test_draws_follow_seed_epoch_and_position():
    a = GroupBatchSampler(keys(50), batch_size=3, k=3, num_replicas=4, rank=0, seed=1, batches_per_epoch=3)
    b = GroupBatchSampler(keys(50), batch_size=3, k=3, num_replicas=4, rank=0, seed=1, batches_per_epoch=3)
    # draw i of epoch e uses seed + e * batches_per_epoch + i: (epoch 1, draw 0) == (epoch 0, draw 3)
    assert a.global_batch(1, 0) == b.global_batch(0, 3)
    assert a.global_batch(0, 0) != a.global_batch(0, 1)
    c = GroupBatchSampler(keys(50), batch_size=3, k=3, num_replicas=4, rank=0, seed=2, batches_per_epoch=3)
    assert c.global_batch(0, 0) != a.global_batch(0, 0)


def test_iteration_covers_one_epoch_and_advances():
    sampler = GroupBatchSampler(keys(30), batch_size=2, k=2, num_replicas=2, rank=1, batches_per_epoch=3)
    assert len(sampler) == 3
    first = list(sampler)
    assert len(first) == 3 and sampler.epoch == 1 and sampler.position == 0
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_banned_groups_are_skipped_identically_on_every_rank():
    group_keys = keys(20)
    banned = set(group_keys[:12])
    ranks = samplers(group_keys, 2, batch_size=4, k=2, banned=banned, batches_per_epoch=5)
    for draw in range(5):
        slices = [sampler.next_batch() for sampler in ranks]
        assert all(index >= 12 for s in slices for index in s)
        assert slices[0] + slices[1] == ranks[0].global_batch(0, draw)
    late = GroupBatchSampler(group_keys, batch_size=4, k=2, num_replicas=2, rank=0)
    before = late.global_batch(0, 0)
    late.ban({group_keys[i] for i in before})
    assert not set(late.global_batch(0, 0)) & set(before)


def test_not_enough_groups_is_a_clear_error():
    group_keys = keys(6)
    sampler = GroupBatchSampler(
        group_keys, batch_size=4, k=2, num_replicas=2, rank=0, banned=set(group_keys[:3])
    )
    with pytest.raises(NotEnoughGroupsError, match="only 3 of 6 dataset items are not banned"):
        sampler.next_batch()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 3, "k": 4, "num_replicas": 1, "rank": 0}, "not a multiple of k"),
        ({"batch_size": 2, "k": 2, "num_replicas": 2, "rank": 2}, "rank 2"),
        ({"batch_size": 0, "k": 1, "num_replicas": 1, "rank": 0}, "batch_size"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupBatchSampler(keys(10), **kwargs)


def test_state_round_trips_through_json_for_exact_resume():
    group_keys = keys(40)
    original = GroupBatchSampler(group_keys, batch_size=3, k=3, num_replicas=2, rank=1, batches_per_epoch=4)
    original.set_epoch(2)
    original.next_batch()
    original.ban([group_keys[5], group_keys[9]])
    state = json.loads(json.dumps(original.state_dict()))
    resumed = GroupBatchSampler(group_keys, batch_size=3, k=3, num_replicas=2, rank=1, batches_per_epoch=4)
    resumed.load_state_dict(state)
    assert resumed.banned == {group_keys[5], group_keys[9]}
    assert (resumed.epoch, resumed.position) == (2, 1)
    assert [resumed.next_batch() for _ in range(6)] == [original.next_batch() for _ in range(6)]


def test_string_keys_and_invalid_state():
    sampler = GroupBatchSampler(["a", "b", "c"], batch_size=1, k=1, num_replicas=1, rank=0)
    sampler.ban(["b"])
    assert json.loads(json.dumps(sampler.state_dict()))["banned"] == ["b"]
    with pytest.raises(ValueError, match="missing"):
        sampler.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="position"):
        sampler.load_state_dict({"epoch": 0, "position": 5, "banned": []})
