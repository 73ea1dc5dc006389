"""The bucket rule and the Pareto front as pure functions."""

from __future__ import annotations

import itertools
import random

import pytest

from sampleattn.store.buckets import choose_bucket
from sampleattn.store.pareto import dominates, pareto_front

TUNED = [8192, 32768, 131072]


@pytest.mark.parametrize(
    "seq_len, length, exact, far",
    [
        (32768, 32768, True, False),     # exact
        (40000, 32768, False, False),    # largest tuned length not above
        (65536, 32768, False, False),    # 2x is not "far"
        (65537, 32768, False, True),     # beyond 2x is
        (131071, 32768, False, True),
        (1 << 20, 131072, False, True),  # above everything: the largest
        (8192, 8192, True, False),
        (4096, 8192, False, False),      # below everything: the smallest above
        (4095, 8192, False, True),
        (1, 8192, False, True),
    ],
)
def test_bucket_rule(seq_len, length, exact, far):
    choice = choose_bucket(TUNED, seq_len)
    assert (choice.length, choice.exact, choice.far) == (length, exact, far)
    assert choice.requested == seq_len
    assert choice.ratio == max(length, seq_len) / min(length, seq_len)


def test_bucket_rule_edge_cases():
    assert choose_bucket([], 1024) is None
    assert choose_bucket([2048, 2048, 1024], 1500).length == 1024  # duplicates, any order
    assert not choose_bucket(TUNED, 1 << 20, far_ratio=10).far
    with pytest.raises(ValueError):
        choose_bucket(TUNED, 0)
    with pytest.raises(ValueError):
        choose_bucket(TUNED, 1024, far_ratio=0.5)


def test_bucket_rule_against_its_definition():
    rng = random.Random(0)
    for _ in range(200):
        tuned = rng.sample(range(1, 64), rng.randint(1, 5))
        seq_len = rng.randint(1, 70)
        below = [n for n in tuned if n <= seq_len]
        expected = max(below) if below else min(tuned)
        assert choose_bucket(tuned, seq_len).length == expected


def brute_force(points):
    return sorted(i for i, p in enumerate(points) if not any(dominates(q, p) for q in points))


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_against_brute_force(seed):
    rng = random.Random(seed)
    grid = rng.choice([3, 10, 1000])  # small grids give many ties
    points = [(rng.randrange(grid) / grid, rng.randrange(grid) / grid) for _ in range(rng.randint(0, 60))]
    indices = list(range(len(points)))
    front = pareto_front(indices, key=lambda i: points[i])
    assert sorted(front) == brute_force(points)
    assert [points[i][1] for i in front] == sorted(points[i][1] for i in front)


def test_pareto_front_ties_and_duplicates():
    points = [(0.1, 2.0), (0.1, 2.0), (0.1, 3.0), (0.2, 1.0), (0.05, 5.0), (0.2, 1.0), (0.3, 1.0)]
    front = pareto_front(list(range(len(points))), key=lambda i: points[i])
    assert sorted(front) == [0, 1, 3, 4, 5]  # equal points are both kept; (0.3, 1.0) is dominated
    assert pareto_front([], key=lambda i: i) == []
    for a, b in itertools.permutations(points, 2):
        assert not (dominates(a, b) and dominates(b, a))
