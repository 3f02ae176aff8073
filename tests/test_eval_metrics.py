"""pass@k, avg@n, bootstrap intervals and the paired bootstrap test."""

from __future__ import annotations

import json
import math
import random

import os

import numpy as np
import pytest

from eval.benchmarks import shared_data_dir
from eval.metrics import avg_at_n, bootstrap_ci, mean_pass_at_k, paired_bootstrap, pass_at_k
from eval.scoring import score, score_many

CASES_DIR = shared_data_dir() / "lighteval-metric-cases"
# In CI (CI=true) the shared data must be there: these tests then run and fail loudly instead of skipping.
needs_cases = pytest.mark.skipif(not CASES_DIR.is_dir() and not os.environ.get("CI"), reason="shared data folder not available")


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_exact_combinatorics():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 64)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edges_and_bias():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every k-subset holds a correct one
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # Not the biased 1 - (1 - c/n)^k.
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5) != pytest.approx(1 - 0.75**2)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_avg_at_n_weighs_problems_equally():
    correct = np.array([[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert avg_at_n(correct) == pytest.approx((1 + 0.25 + 0) / 3)
    assert mean_pass_at_k(correct, 1) == pytest.approx(avg_at_n(correct))
    assert mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)


def _lighteval_cases(name: str) -> list[dict]:
    return json.loads((CASES_DIR / name).read_text())["test_cases"]


@needs_cases
@pytest.mark.parametrize("case", _lighteval_cases("pass_at_k_math.json") if CASES_DIR.is_dir() else [], ids=lambda c: c["name"])
def test_lighteval_pass_at_k_fixtures(case):
    gold = case["doc"]["choices"][case["doc"]["gold_index"]]
    k, n = case["metric_params"]["k"], case["metric_params"]["n"]
    texts = case["model_response"]["text"][:n]
    c = sum(score(gold, text)[0] for text in texts)
    (expected,) = case["expected_output"].values()
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=case["tolerance"])


@needs_cases
@pytest.mark.parametrize("case", _lighteval_cases("avg_at_k_math.json") if CASES_DIR.is_dir() else [], ids=lambda c: c["name"])
def test_lighteval_avg_at_k_fixtures(case):
    gold = case["doc"]["choices"][case["doc"]["gold_index"]]
    k = case["metric_params"]["k"]
    texts = case["model_response"]["text"][:k]
    correct = np.array([[s.correct for s in score_many([(gold, t) for t in texts], workers=1)]])
    (expected,) = case["expected_output"].values()
    assert avg_at_n(correct) == pytest.approx(expected, abs=case["tolerance"])


def test_bootstrap_ci_covers_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small = (rng.random((50, 4)) < 0.6).astype(float)
    large = (rng.random((800, 4)) < 0.6).astype(float)
    lo_s, hi_s = bootstrap_ci(small, n_boot=500, seed=0)
    lo_l, hi_l = bootstrap_ci(large, n_boot=500, seed=0)
    assert lo_s <= avg_at_n(small) <= hi_s
    assert lo_l <= avg_at_n(large) <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci(small, n_boot=500, seed=0) == (lo_s, hi_s)  # seeded
    assert bootstrap_ci(np.ones((20, 3)), n_boot=200) == (1.0, 1.0)


def test_paired_bootstrap_detects_a_real_difference():
    rng = np.random.default_rng(2)
    skill = rng.random(300)  # per-problem difficulty shared by both systems
    a = (rng.random((300, 4)) < skill[:, None] * 0.6).astype(float)
    b = (rng.random((300, 4)) < np.minimum(1, skill[:, None] * 0.6 + 0.15)).astype(float)
    res = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert res.delta == pytest.approx(avg_at_n(b) - avg_at_n(a))
    assert res.delta > 0.1 and res.ci_low > 0 and res.p_value < 0.01
    flipped = paired_bootstrap(b, a, n_boot=1000, seed=0)
    assert flipped.delta == pytest.approx(-res.delta) and flipped.ci_high < 0


def test_paired_bootstrap_finds_nothing_in_identical_or_equivalent_inputs():
    rng = np.random.default_rng(3)
    a = (rng.random((200, 4)) < 0.5).astype(float)
    same = paired_bootstrap(a, a.copy(), n_boot=500, seed=0)
    assert same.delta == 0.0 and same.p_value == 1.0 and same.ci_low <= 0 <= same.ci_high
    # Two draws of the same system: no significant difference.
    b = (rng.random((200, 4)) < 0.5).astype(float)
    noise = paired_bootstrap(a, b, n_boot=500, seed=0)
    assert noise.p_value > 0.05 and noise.ci_low <= 0 <= noise.ci_high


def test_paired_bootstrap_rejects_mismatched_problems():
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones((3, 2)), np.ones((4, 2)))
