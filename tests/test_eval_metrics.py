"""pass@k, avg@n, maj@k, bootstrap intervals and the paired bootstrap test."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from fractions import Fraction
from functools import partial

import numpy as np
import pytest

from eval.benchmarks import shared_data_dir
from eval.metrics import (
    answer_ids,
    avg_at_n,
    bootstrap_ci,
    maj_at_k,
    mean_pass_at_k,
    paired_bootstrap,
    pass_at_k,
)
from eval.scoring import answer_key, score

CASES_DIR = shared_data_dir() / "lighteval-metric-cases"


# ----------------------------------------------------------------------------- pass@k


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The Codex estimator computed exactly: 1 - C(n-c, k) / C(n, k) (C(m, k) = 0 for m < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_exact_combinatorics():
    rng = random.Random(0)
    cases = [(rng.randint(1, 200), None, None) for _ in range(2000)]
    cases = [(n, rng.randint(0, n), rng.randint(1, n)) for n, _, _ in cases]
    # Edges: no correct sample, all correct, k = n, n - c < k (every k-subset holds a
    # correct one), n - c = k (exactly one all-wrong subset), k = 1 (= c/n).
    for n in (1, 2, 5, 16, 64, 200):
        for c in {0, 1, n // 2, n - 1, n}:
            for k in {1, 2, n // 2 or 1, n - c, n - c + 1, n}:
                if 1 <= k <= n and 0 <= c <= n:
                    cases.append((n, c, k))
    for n, c, k in cases:
        exact = exact_pass_at_k(n, c, k)
        got = pass_at_k(n, c, k)
        assert got == pytest.approx(float(exact), rel=1e-12, abs=1e-14), (n, c, k)
        if c == 0:
            assert got == 0.0
        if n - c < k:
            assert got == 1.0
        if k == 1:
            assert got == pytest.approx(c / n, abs=1e-15)


def test_pass_at_k_edges_and_bias():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every k-subset holds a correct one
    assert pass_at_k(10, 1, 10) == 1.0  # k = n
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # Not the biased 1 - (1 - p)^k.
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5) != pytest.approx(1 - 0.75**2)
    # Stable where the plain ratio of binomials would overflow a float.
    assert pass_at_k(2000, 3, 1000) == pytest.approx(float(exact_pass_at_k(2000, 3, 1000)), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_avg_at_n_weighs_problems_equally():
    correct = np.array([[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert avg_at_n(correct) == pytest.approx((1 + 0.25 + 0) / 3)
    assert mean_pass_at_k(correct, 1) == pytest.approx(avg_at_n(correct))
    assert mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- maj@k


def _vote(ids: list[int], ok: list[bool], abstain: bool) -> int:
    """The reference rule, written as lighteval writes it: max(answers, key=answers.count)."""
    votes = [a for a in ids if not (abstain and a < 0)]
    if not votes:
        return 0
    winner = max(votes, key=votes.count)
    return int(winner >= 0 and ok[ids.index(winner)])


def _brute_maj(ids: list[int], ok: list[bool], k: int, abstain: bool) -> Fraction:
    subsets = list(itertools.combinations(range(len(ids)), k))
    wins = sum(_vote([ids[i] for i in s], [ok[i] for i in s], abstain) for s in subsets)
    return Fraction(wins, len(subsets))


def test_maj_at_k_vote_rules():
    # answers:        A  A  B      ->  A wins
    assert maj_at_k([[1, 1, 0]], [[0, 0, 1]]) == 1.0
    assert maj_at_k([[0, 0, 1]], [[0, 0, 1]]) == 0.0
    # A tie goes to the answer that appears first (lighteval): B A C -> B.
    assert maj_at_k([[0, 1, 0]], [[0, 1, 2]]) == 0.0
    assert maj_at_k([[1, 0, 0]], [[0, 1, 2]]) == 1.0
    assert maj_at_k([[0, 1, 1, 0]], [[0, 1, 1, 0]]) == 0.0  # 2-2 tie: the first answer
    # No answer (-1): by default one more (wrong) answer that can win the vote ...
    assert maj_at_k([[0, 0, 1]], [[-1, -1, 0]]) == 0.0
    assert maj_at_k([[0, 1, 0]], [[-1, 0, -1]]) == 0.0
    assert maj_at_k([[0, 1]], [[-1, 0]]) == 0.0  # tie with "no answer", which came first
    assert maj_at_k([[1, 0]], [[0, -1]]) == 1.0
    # ... or, with missing="abstain", no vote at all.
    assert maj_at_k([[0, 0, 1]], [[-1, -1, 0]], missing="abstain") == 1.0
    assert maj_at_k([[0, 0]], [[-1, -1]], missing="abstain") == 0.0
    # Averaged over problems.
    assert maj_at_k([[1, 1, 0], [0, 0, 1], [1, 0, 0]], [[0, 0, 1], [0, 0, 1], [0, 1, 2]]) == pytest.approx(2 / 3)


def test_maj_at_k_rejects_bad_input():
    with pytest.raises(ValueError):
        maj_at_k([[1, 0]], [[0, 0]])  # one answer, two verdicts
    with pytest.raises(ValueError):
        maj_at_k([[1, 0, 0, 0]], [[0, 0, 1, 1]], k=2)  # also on the subset path
    with pytest.raises(ValueError):
        maj_at_k([[1, 0]], [[-1, 0]])  # "no answer" marked correct
    with pytest.raises(ValueError):
        maj_at_k([[1, 0]], [[0, 1, 2]])  # shapes differ
    with pytest.raises(ValueError):
        maj_at_k([[1, 0]], [[0, 1]], k=3)
    with pytest.raises(ValueError):
        maj_at_k([[1, 0]], [[0, 1]], k=0)
    with pytest.raises(ValueError):
        maj_at_k([[1, 0]], [[0, 1]], missing="ignore")
    with pytest.raises(TypeError):
        maj_at_k([[1, 0]], [["Paris", "London"]])  # keys, not answer ids: use answer_ids


def test_maj_at_k_below_n_is_the_exact_mean_over_k_subsets():
    """k < n: the mean of the vote over every k-subset (kept in sample order), which
    the counting in `maj_at_k` must reproduce exactly; k = n: the single vote."""
    rng = random.Random(1)
    for _ in range(1500):
        n, n_answers = rng.randint(1, 10), rng.randint(1, 4)
        ids = [rng.randint(-1, n_answers - 1) for _ in range(n)]
        right = {a for a in range(n_answers) if rng.random() < 0.4}
        ok = [a in right for a in ids]
        k = rng.randint(1, n)
        for missing in ("vote", "abstain"):
            expected = _brute_maj(ids, ok, k, missing == "abstain")
            got = maj_at_k(np.array([ok], dtype=float), np.array([ids]), k, missing)
            assert got == pytest.approx(float(expected), abs=1e-12), (ids, ok, k, missing)


def test_maj_at_k_small_k_examples():
    # A A B (A right): subsets of 2 in order: AA -> A, AB -> A (first), AB -> A.
    assert maj_at_k([[1, 1, 0]], [[0, 0, 1]], k=2) == 1.0
    # B A A: BA -> B, BA -> B, AA -> A.
    assert maj_at_k([[0, 1, 1]], [[1, 0, 0]], k=2) == pytest.approx(1 / 3)
    assert maj_at_k([[0, 1, 1]], [[1, 0, 0]], k=1) == pytest.approx(avg_at_n([[0, 1, 1]]))  # maj@1 = pass@1
    # Larger n: still fast and exact (checked against a brute force over C(16, 8) subsets).
    ids = [0, 1, 0, 2, 1, 0, -1, 3, 1, 0, 2, 2, 1, -1, 0, 4]
    ok = [a == 1 for a in ids]
    assert maj_at_k([ok], [ids], k=8) == pytest.approx(float(_brute_maj(ids, ok, 8, False)), abs=1e-12)


def test_maj_at_k_is_unbiased_for_the_population_value():
    """Exchangeable draws: the k < n estimate averages to the true maj@k."""
    p = {0: 0.45, 1: 0.35, 2: 0.2}  # answer 0 is right; a 3-sample vote picks it with probability:
    truth = 0.0
    for draw in itertools.product(p, repeat=3):
        truth += math.prod(p[a] for a in draw) * _vote(list(draw), [a == 0 for a in draw], False)
    rng = np.random.default_rng(0)
    ids = rng.choice(3, size=(20000, 6), p=list(p.values()))
    est = maj_at_k((ids == 0).astype(float), ids, k=3)
    assert est == pytest.approx(truth, abs=0.01)


def test_answer_ids_group_equivalent_answers():
    keys = [[answer_key(x) for x in row] for row in [["18", "18.00", "5", None], ["\\frac{1}{2}", "0.5", "1/3", "1/2"]]]
    ids = answer_ids(keys)
    assert ids.tolist() == [[0, 0, 1, -1], [0, 0, 1, 0]]
    with pytest.raises(ValueError):
        answer_ids([["a"], ["b", "c"]])


# ----------------------------------------------------------------------------- lighteval fixtures


def _lighteval_cases(name: str) -> list:
    """The fixture's cases; one placeholder when the shared data is missing, so the
    test still runs: it skips, or fails where CI is set (the data must be there)."""
    if not CASES_DIR.is_dir():
        return [pytest.param(None, id="shared-data-missing")]
    cases = json.loads((CASES_DIR / name).read_text())["test_cases"]
    return [pytest.param(case, id=case["name"]) for case in cases]


def _need(case: dict | None) -> dict:
    if case is None:
        if os.environ.get("CI"):
            pytest.fail(f"shared data {CASES_DIR} is missing (CI is set: it must be there)")
        pytest.skip("shared data folder not available")
    return case


def _gold(doc: dict) -> str:
    index = doc["gold_index"]
    (index,) = index if isinstance(index, list) else [index]
    return doc["choices"][index]


@pytest.mark.parametrize("case", _lighteval_cases("pass_at_k_math.json"))
def test_lighteval_pass_at_k_fixtures(case):
    case = _need(case)
    gold = _gold(case["doc"])
    k, n = case["metric_params"]["k"], case["metric_params"]["n"]
    texts = case["model_response"]["text"][:n]
    assert len(texts) == n
    c = sum(score(gold, text)[0] for text in texts)
    (expected,) = case["expected_output"].values()
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=case["tolerance"])
    assert mean_pass_at_k(np.array([[score(gold, t)[0] for t in texts]]), k) == pytest.approx(expected, abs=case["tolerance"])


@pytest.mark.parametrize("case", _lighteval_cases("avg_at_k_math.json"))
def test_lighteval_avg_at_k_fixtures(case):
    case = _need(case)
    gold = _gold(case["doc"])
    k = case["metric_params"]["k"]
    texts = case["model_response"]["text"][:k]
    assert len(texts) == k
    correct = np.array([[score(gold, t)[0] for t in texts]], dtype=float)
    (expected,) = case["expected_output"].values()
    assert avg_at_n(correct) == pytest.approx(expected, abs=case["tolerance"])


@pytest.mark.parametrize("case", _lighteval_cases("maj_at_k.json"))
def test_lighteval_maj_at_k_fixtures(case):
    """Plain-text answers ("Paris"), compared by exact string match as lighteval's
    maj_at_k does without normalisers: the key is the text, correct iff it is the gold.
    The "No Majority" case (Paris, London, Berlin) expects 1: the tie goes to the first."""
    case = _need(case)
    gold = _gold(case["doc"])
    k = case["metric_params"]["k"]
    texts = case["model_response"]["text"]
    assert len(texts) == k
    correct = np.array([[t == gold for t in texts]], dtype=float)
    (expected,) = case["expected_output"].values()
    assert maj_at_k(correct, answer_ids([texts]), k) == pytest.approx(expected, abs=case["tolerance"])


# ----------------------------------------------------------------------------- bootstrap


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


def test_bootstrap_ci_for_pass_at_k_and_maj_at_k():
    rng = np.random.default_rng(4)
    skill = rng.random(200)
    # Answer 0 is right; wrong samples spread over answers 1-3, or give none (-1).
    right = rng.random((200, 8)) < skill[:, None]
    answers = np.where(right, 0, rng.integers(-1, 4, size=(200, 8)))
    answers[~right & (answers == 0)] = 1
    correct = right.astype(float)

    pass4 = partial(mean_pass_at_k, k=4)
    lo, hi = bootstrap_ci(correct, pass4, n_boot=300, seed=0)
    assert lo < pass4(correct) < hi

    for k in (8, 3):
        maj = partial(maj_at_k, k=k)
        lo, hi = bootstrap_ci(correct, maj, n_boot=200, seed=0, answers=answers)
        assert lo < maj(correct, answers) < hi
        assert bootstrap_ci(correct, maj, n_boot=200, seed=0, answers=answers) == (lo, hi)  # seeded
    # The same draws as without answers: the verdicts' replicates are unchanged.
    assert bootstrap_ci(correct, n_boot=100, seed=3) == bootstrap_ci(
        correct, lambda c, a: avg_at_n(c), n_boot=100, seed=3, answers=answers
    )
    with pytest.raises(ValueError):
        bootstrap_ci(correct, maj, answers=answers[:, :4])

    same = paired_bootstrap(correct, correct, n_boot=200, stat=partial(maj_at_k, k=8), answers_a=answers, answers_b=answers)
    assert same.delta == 0.0 and same.p_value == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(correct, correct, stat=partial(maj_at_k, k=8), answers_a=answers)


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
