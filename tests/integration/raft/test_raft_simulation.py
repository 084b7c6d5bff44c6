"""Randomised Raft simulation over many seeds.

CI runs DEFAULT_SEEDS seeds; `--seeds N` runs more and `--seed-start S
--seeds 1` replays one failing seed (its number is in the assertion message).
"""

from __future__ import annotations

import pytest

from chunkfs.raft.core import RaftCore, VoteRequest

from .simulator import InvariantViolation, run_seed, summarize

DEFAULT_SEEDS = 1500
CHUNK = 100


def _seed_range(config: pytest.Config) -> range:
    start = config.getoption("--seed-start")
    count = config.getoption("--seeds") or DEFAULT_SEEDS
    return range(start, start + count)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed_chunk" in metafunc.fixturenames:
        seeds = _seed_range(metafunc.config)
        chunks = [seeds[i: i + CHUNK] for i in range(0, len(seeds), CHUNK)]
        metafunc.parametrize("seed_chunk", chunks, ids=[f"seeds{c.start}-{c.stop - 1}" for c in chunks])


def test_random_seeds_keep_every_invariant(seed_chunk: range) -> None:
    sims = [run_seed(seed) for seed in seed_chunk]  # raises InvariantViolation naming the seed
    stats = summarize(sims)
    # The runs must have exercised the interesting paths, not idled.
    assert stats["puts_ok"] > 0 and stats["gets_ok"] > 0
    if len(seed_chunk) >= 50:
        for what in ("crash", "partition", "compact", "installed-snapshot", "conf-change", "transfer", "lazy-ticks"):
            assert stats.get(what, 0) > 0, (what, stats)


class DoubleVoteCore(RaftCore):
    """Planted bug: grants its vote to any up-to-date candidate, even twice in one term."""

    def _can_vote(self, m: VoteRequest) -> bool:
        return True


def test_planted_double_vote_is_caught() -> None:
    caught: list[str] = []
    for seed in range(200):
        try:
            run_seed(seed, core_factory=DoubleVoteCore)
        except InvariantViolation as exc:
            caught.append(str(exc))
            break
    assert caught, "the simulator missed a core that votes twice in one term"
    assert "election safety" in caught[0] and "seed=" in caught[0]
