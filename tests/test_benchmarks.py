"""The benchmark scripts' own measurements, where a wrong one would go unnoticed in a results file."""

from __future__ import annotations

import torch

from benchmarks import layer_scaling


def test_a_blocks_memory_counts_even_below_an_earlier_peak():
    # The process already peaked higher (start-up does, at one thread and 64 tokens), and freed
    # what it peaked with: two steps of a block still raise its resident memory by their own use.
    torch.ones(256 << 20, dtype=torch.uint8).sum()
    assert layer_scaling.peak_memory("static", 8) > 4
