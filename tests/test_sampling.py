"""Batch samplers: every index once an epoch, disjoint rank shares, similar lengths together, mid-epoch resume."""

import random

import pytest

from calibration_lightning.data.sampling import LengthGroupedBatchSampler, LengthSortedBatches

LENGTHS = [random.Random(0).randint(5, 400) for _ in range(103)]


def test_evaluation_batches_hold_every_index_once_longest_first():
    batches = list(LengthSortedBatches(LENGTHS, 8))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103)) and len(batches) == 13 and all(len(b) == 8 for b in batches[:-1])
    assert [LENGTHS[i] for i in flat] == sorted(LENGTHS, reverse=True)


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_training_batches_hold_every_index_once_an_epoch(epoch):
    sampler = LengthGroupedBatchSampler(LENGTHS, 4, seed=3, group=4, epoch_source=lambda: epoch)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(103)) and len(batches) == len(sampler) == 26
    # a batch's prompts come from one window of batch_size * group samples, sorted by length within it
    for b in batches:
        assert [LENGTHS[i] for i in b] == sorted((LENGTHS[i] for i in b), reverse=True)


def test_each_epoch_its_own_order_the_same_for_the_same_seed():
    def order(seed, epoch):
        return LengthGroupedBatchSampler(LENGTHS, 4, seed=seed, epoch_source=lambda: epoch).batches(epoch)

    assert order(0, 0) == order(0, 0) and order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shares_are_disjoint_equal_and_cover_every_index(world_size):
    whole = LengthGroupedBatchSampler(LENGTHS, 4, seed=0).batches(2)
    shares = [
        LengthGroupedBatchSampler(LENGTHS, 4, seed=0, rank=r, world_size=world_size).batches(2)
        for r in range(world_size)
    ]
    assert len({len(s) for s in shares}) == 1  # every rank steps as often
    # rank r takes batches r, r + world, ... of the one list, padded at its end with batches it already holds
    interleaved = [b for r in range(len(shares[0])) for b in (s[r] for s in shares)]
    assert interleaved[: len(whole)] == whole and all(b in whole for b in interleaved[len(whole) :])
    seen = [tuple(b) for s in shares for b in s]
    assert sorted(i for b in set(seen) for i in b) == list(range(103))
    assert len(seen) - len(set(seen)) == (-len(whole)) % world_size  # only the padding repeats


def test_resume_skips_the_batches_already_trained_in_that_epoch_only():
    epoch = {"now": 1}
    sampler = LengthGroupedBatchSampler(LENGTHS, 4, seed=0, epoch_source=lambda: epoch["now"])
    full = sampler.batches(1)
    sampler.resume_at(1, 7)
    assert list(sampler) == full[7:]
    assert list(sampler) == full  # once: the next pass over the epoch is whole
    sampler.resume_at(0, 7)  # a position in another epoch than the one iterated is not applied
    assert list(sampler) == full
    epoch["now"] = 2
    assert list(sampler) == sampler.batches(2)


@pytest.mark.parametrize("world_size,round_batches", [(1, 10), (1, 7), (2, 5), (3, 100), (1, 26), (1, 14)])
def test_rounds_cut_each_pass_into_equal_rounds_in_order(world_size, round_batches):
    for rank in range(world_size):

        def sampler(epoch, round_batches=round_batches, rank=rank):
            return LengthGroupedBatchSampler(
                LENGTHS,
                4,
                seed=0,
                rank=rank,
                world_size=world_size,
                round_batches=round_batches,
                epoch_source=lambda: epoch,
            )

        passes = [sampler(0, 0).batches(p) for p in (0, 1)]  # round_batches=0: a Lightning epoch is a pass
        per_rank = len(passes[0])  # 26 batches dealt to world_size ranks
        assert per_rank == -(-26 // world_size)
        k = sampler(0).rounds_per_pass
        assert k == (max(1, round(per_rank / round_batches)) if round_batches < per_rank else 1)
        rounds = [list(sampler(e)) for e in range(2 * k)]
        length = per_rank // k
        assert all(len(r) == length == len(sampler(e)) for e, r in enumerate(rounds))  # Lightning's fixed length
        assert [b for r in rounds[:k] for b in r] == passes[0][: k * length]  # in order, fewer than k left out
        assert [b for r in rounds[k:] for b in r] == passes[1][: k * length] and per_rank - k * length < k


def test_resume_inside_a_round_skips_only_that_rounds_trained_batches():
    sampler = LengthGroupedBatchSampler(LENGTHS, 4, seed=0, round_batches=10, epoch_source=lambda: 4)
    full = sampler.batches(4)  # round 4: the second pass's second round (26 batches: 3 rounds of 8)
    assert full == sampler.pass_batches(1)[8:16]
    sampler.resume_at(4, 3)
    assert list(sampler) == full[3:]
