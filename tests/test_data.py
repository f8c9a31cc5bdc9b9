"""The training sampler: one order per (seed, epoch), sharded across ranks so that the global batches equal a
single-process run's, equal batch counts on every rank, and an exact skip for mid-epoch resume."""

from __future__ import annotations

import torch

from reluvit.data.datamodules import EpochSampler


def batches(sampler: EpochSampler, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def test_order_depends_only_on_seed_and_epoch():
    a = list(EpochSampler(100, 3, 10, 0, 1, lambda: (2, 0)))
    assert a == list(EpochSampler(100, 3, 10, 0, 1, lambda: (2, 0)))
    assert a != list(EpochSampler(100, 3, 10, 0, 1, lambda: (1, 0)))
    assert a != list(EpochSampler(100, 4, 10, 0, 1, lambda: (2, 0)))
    assert sorted(a) == list(range(100))


def test_ranks_together_see_the_single_process_global_batches():
    single = batches(EpochSampler(103, 0, 8, 0, 1, lambda: (5, 0)), 8)
    ranks = [batches(EpochSampler(103, 0, 4, r, 2, lambda: (5, 0)), 4) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 103 // 8  # no rank runs out early: no hang
    for i, global_batch in enumerate(single):
        assert sorted(ranks[0][i] + ranks[1][i]) == sorted(global_batch)


def test_resume_skips_exactly_the_trained_batches():
    full = batches(EpochSampler(96, 1, 8, 0, 1, lambda: (0, 0)), 8)
    resumed = batches(EpochSampler(96, 1, 8, 0, 1, lambda: (0, 5)), 8)
    assert resumed == full[5:]
    shard = batches(EpochSampler(96, 1, 4, 1, 2, lambda: (0, 5)), 4)
    assert shard == batches(EpochSampler(96, 1, 4, 1, 2, lambda: (0, 0)), 4)[5:]
    assert len(EpochSampler(96, 1, 4, 1, 2, lambda: (0, 0))) == 48
    assert torch.equal(torch.tensor(full[0]), torch.tensor(list(EpochSampler(96, 1, 8, 0, 1, lambda: (0, 0)))[:8]))
