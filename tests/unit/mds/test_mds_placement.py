"""Placement of new replicas: distinct servers, distinct hosts, weighted by free space."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkfs.mds.placement import Candidate, choose_servers

GiB = 1 << 30


def cands(*specs: tuple[int, str, int]) -> list[Candidate]:
    return [Candidate(cs_id, host, free) for cs_id, host, free in specs]


def host_of(candidates: list[Candidate]) -> dict[int, str]:
    return {c.cs_id: c.host for c in candidates}


def test_distinct_servers_on_distinct_hosts() -> None:
    pool = cands(*((i, f"h{i}", GiB) for i in range(1, 7)))
    for seed in range(50):
        chosen = choose_servers(pool, 3, rng=random.Random(seed))
        assert len(chosen) == 3
        assert len(set(chosen)) == 3
        assert len({host_of(pool)[c] for c in chosen}) == 3


def test_distinct_hosts_preferred_over_more_free_space() -> None:
    # Host A has three nearly empty servers, B and C one small each: still one per host.
    pool = cands((1, "A", 100 * GiB), (2, "A", 100 * GiB), (3, "A", 100 * GiB), (4, "B", GiB), (5, "C", GiB))
    for seed in range(100):
        chosen = choose_servers(pool, 3, rng=random.Random(seed))
        hosts = [host_of(pool)[c] for c in chosen]
        assert sorted(hosts) == ["A", "B", "C"], (seed, chosen)


def test_falls_back_to_same_host_when_needed() -> None:
    pool = cands((1, "A", GiB), (2, "A", GiB), (3, "B", GiB))
    for seed in range(30):
        chosen = choose_servers(pool, 3, rng=random.Random(seed))
        assert sorted(chosen) == [1, 2, 3]
        # The first two picks cover both hosts before any host is reused.
        assert {host_of(pool)[c] for c in chosen[:2]} == {"A", "B"}


def test_single_host_many_servers() -> None:
    pool = cands(*((i, "only", GiB) for i in range(1, 5)))
    chosen = choose_servers(pool, 3, rng=random.Random(1))
    assert len(set(chosen)) == 3


def test_returns_fewer_when_not_enough() -> None:
    pool = cands((1, "A", GiB), (2, "B", GiB))
    assert sorted(choose_servers(pool, 3, rng=random.Random(0))) == [1, 2]
    assert choose_servers([], 3, rng=random.Random(0)) == []
    assert choose_servers(pool, 0, rng=random.Random(0)) == []


def test_exclude_and_min_free() -> None:
    pool = cands((1, "A", 10 * GiB), (2, "B", 10 * GiB), (3, "C", GiB), (4, "D", 0), (5, "E", 10 * GiB))
    for seed in range(50):
        chosen = choose_servers(pool, 5, exclude=frozenset({1}), min_free=GiB, rng=random.Random(seed))
        # 1 is excluded, 3 has exactly min_free (not more), 4 is full.
        assert sorted(chosen) == [2, 5]


def test_full_servers_never_chosen_even_with_default_min_free() -> None:
    pool = cands((1, "A", 0), (2, "B", 0))
    assert choose_servers(pool, 2, rng=random.Random(0)) == []


def test_avoid_hosts_are_used_last() -> None:
    pool = cands((1, "A", 100 * GiB), (2, "B", GiB), (3, "C", GiB))
    for seed in range(50):
        chosen = choose_servers(pool, 2, avoid_hosts=frozenset({"A"}), rng=random.Random(seed))
        assert sorted(chosen) == [2, 3]
    # But they still count when nothing else is left.
    assert sorted(choose_servers(pool, 3, avoid_hosts=frozenset({"A"}), rng=random.Random(0))) == [1, 2, 3]


def test_weighted_toward_free_space() -> None:
    # Server 1 has 9x the free space of server 2, 3 of 4: picking one replica,
    # 1 should be chosen ~90% of the time. Seeded, and with a wide margin.
    pool = cands((1, "A", 900 * GiB), (2, "B", 100 * GiB))
    rng = random.Random(1234)
    counts = Counter(choose_servers(pool, 1, rng=rng)[0] for _ in range(4000))
    share = counts[1] / 4000
    assert 0.85 < share < 0.95, counts


def test_weighting_spreads_load_rather_than_herding() -> None:
    pool = cands(*((i, f"h{i}", (i + 1) * GiB) for i in range(10)))
    rng = random.Random(99)
    counts = Counter(c for _ in range(3000) for c in choose_servers(pool, 1, rng=rng))
    # Every server gets some; the emptiest gets most, the fullest least.
    assert set(counts) == set(range(10))
    assert counts[9] > counts[0] * 4
    assert counts.most_common(1)[0][0] in (8, 9)


def test_deterministic_with_seed() -> None:
    pool = cands(*((i, f"h{i % 4}", (i + 1) * GiB) for i in range(12)))
    assert choose_servers(pool, 3, rng=random.Random(5)) == choose_servers(pool, 3, rng=random.Random(5))


@given(
    st.lists(
        st.tuples(st.sampled_from("ABCDE"), st.integers(0, 10 * GiB)),
        max_size=12,
    ),
    st.integers(0, 6),
    st.frozensets(st.integers(0, 11), max_size=4),
    st.integers(0, GiB),
    st.integers(0, 2**32),
)
def test_properties(
    specs: list[tuple[str, int]], count: int, exclude: frozenset[int], min_free: int, seed: int
) -> None:
    pool = [Candidate(i, host, free) for i, (host, free) in enumerate(specs)]
    chosen = choose_servers(pool, count, exclude=exclude, min_free=min_free, rng=random.Random(seed))
    eligible = [c for c in pool if c.cs_id not in exclude and c.free > min_free]
    assert len(chosen) == len(set(chosen)) == min(count, len(eligible))
    assert set(chosen) <= {c.cs_id for c in eligible}
    hosts = [host_of(pool)[c] for c in chosen]
    # Hosts repeat only when there are fewer eligible hosts than replicas.
    assert len(set(hosts)) == min(len(chosen), len({c.host for c in eligible}))


@pytest.mark.parametrize("count", [1, 2, 3])
def test_default_rng_works(count: int) -> None:
    pool = cands((1, "A", GiB), (2, "B", GiB), (3, "C", GiB))
    assert len(set(choose_servers(pool, count))) == count
