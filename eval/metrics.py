"""Accuracy metrics over a [problems x samples] matrix of 0/1 verdicts.

- `pass_at_k`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  in its numerically stable product form (never 1 - (1 - p)^k, which is biased).
- `avg_at_n`: mean over samples per problem, then over problems (pass@1 with n samples).
- `maj_at_k`: majority vote over the extracted answers of k samples (`answer_ids` turns
  per-sample grouping keys into answer ids); for k < n the exact mean over every
  k-subset of the n samples, an unbiased estimate (see `maj_at_k`).
- `bootstrap_ci`: a two-level bootstrap (problems, then samples within problems); with
  `answers=` it resamples answer ids alongside verdicts, for maj@k.
- `paired_bootstrap`: the difference between two result matrices on the same problems,
  with an interval and a two-sided p-value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Callable, Hashable, Sequence

import numpy as np

# stat(correct) -> float, or stat(correct, answers) -> float when answer ids are given.
Stat = Callable[..., float]
MISSING = ("vote", "abstain")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn without replacement from n
    samples, c of them correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(correct: np.ndarray, k: int) -> float:
    """pass@k averaged over problems; `correct` is [problems x samples]."""
    correct = _as_matrix(correct)
    n = correct.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)]))


def avg_at_n(correct: np.ndarray) -> float:
    """Mean over samples per problem, then over problems (problems weigh equally)."""
    correct = _as_matrix(correct)
    return float(correct.mean(axis=1).mean())


def answer_ids(keys: Sequence[Sequence[Hashable | None]]) -> np.ndarray:
    """[problems x samples] grouping keys -> int answer ids for `maj_at_k`.

    A key stands for an answer up to equivalence (e.g. the normalised extracted
    answer, `eval.scoring.answer_key`): samples with equal keys vote together. Within
    a problem, ids count distinct keys in order of first appearance (0, 1, ...);
    None (no answer extracted) becomes -1."""
    rows = [list(row) for row in keys]
    if not rows or any(len(row) != len(rows[0]) for row in rows) or not rows[0]:
        raise ValueError("expected a non-empty [problems x samples] table of keys")
    out = np.empty((len(rows), len(rows[0])), dtype=np.int64)
    for i, row in enumerate(rows):
        seen: dict[Hashable, int] = {}
        for j, key in enumerate(row):
            out[i, j] = -1 if key is None else seen.setdefault(key, len(seen))
    return out


def maj_at_k(correct: np.ndarray, answers: np.ndarray, k: int | None = None, missing: str = "vote") -> float:
    """maj@k averaged over problems: is the most frequent answer among k samples correct?

    `correct` holds 0/1 verdicts and `answers` answer ids (`answer_ids`), both
    [problems x samples]; samples with the same id must share a verdict.

    One problem, k = n samples (lighteval's `maj_at_k`): the answer with the most
    samples wins; a tie goes to the tied answer that appears first in sample order
    (lighteval's `max(answers, key=answers.count)`); the problem counts 1 if the
    winner is correct. `missing` says what samples with no answer (id -1) do:
    "vote" (default, as lighteval, which counts an empty answer as one more answer):
    they form one more answer, never correct, that can win; "abstain": they do not
    vote, and a problem where no sample answered counts 0.

    k < n: the mean of that vote over all C(n, k) subsets of k samples, each kept in
    sample order, computed exactly by counting (no enumeration). The n samples are
    exchangeable draws, so each subset is k draws and the mean is an unbiased estimate
    of maj@k that uses every sample (taking the first k would be unbiased too, with
    more variance), just as the Codex pass@k estimator averages over k-subsets.
    """
    correct = _as_matrix(correct)
    answers = np.asarray(answers)
    if answers.dtype.kind not in "iu":
        raise TypeError(f"answers must be integer answer ids (see answer_ids), got dtype {answers.dtype}")
    if answers.shape != correct.shape:
        raise ValueError(f"answers {answers.shape} and correct {correct.shape} differ in shape")
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    n = correct.shape[1]
    k = n if k is None else k
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    answers = answers.astype(np.int64, copy=False)
    ok = correct > 0
    if ((answers < 0) & ok).any():
        raise ValueError("a sample with no answer (id -1) is marked correct")
    if k == n:
        return float(_vote_all(ok, answers, missing == "abstain").mean())
    return float(np.mean([
        _maj_subsets(tuple(row_ids), tuple(row_ok), k, missing == "abstain")
        for row_ids, row_ok in zip(_canonical(answers).tolist(), ok.tolist())
    ]))


def _vote_all(ok: np.ndarray, answers: np.ndarray, abstain: bool) -> np.ndarray:
    """0/1 per problem: the vote over all samples (vectorised). The first sample with
    the largest count is the first appearance of the winning answer."""
    same = answers[:, :, None] == answers[:, None, :]
    clash = (same & (ok[:, :, None] != ok[:, None, :])).any(axis=(1, 2))
    if clash.any():
        raise ValueError(f"problem {int(clash.argmax())}: samples with the same answer id have different verdicts")
    counts = same.sum(axis=2)
    if abstain:
        counts = np.where(answers < 0, 0, counts)
    winner = counts.argmax(axis=1)
    rows = np.arange(ok.shape[0])
    return (ok[rows, winner] & (answers[rows, winner] >= 0)).astype(np.float64)


def _canonical(answers: np.ndarray) -> np.ndarray:
    """Relabel ids per row by first appearance (keeps -1), so equal vote patterns share a cache entry."""
    out = np.empty_like(answers)
    for i, row in enumerate(answers.tolist()):
        seen: dict[int, int] = {}
        out[i] = [-1 if a < 0 else seen.setdefault(a, len(seen)) for a in row]
    return out


@lru_cache(maxsize=65536)
def _maj_subsets(ids: tuple[int, ...], ok: tuple[bool, ...], k: int, abstain: bool) -> float:
    """Mean over all k-subsets (in sample order) of the first-appearance majority vote
    being correct, by counting: for a correct answer g whose first sample in the subset
    is at position p with j samples of g chosen, every other answer h contributes
    i < j samples (C(m_h, i) ways) or exactly j samples all after p (it ties and loses
    the tie: C(a_h(p), j) ways); no-answer samples, when they abstain, any number."""
    n = len(ids)
    positions: dict[int, list[int]] = {}
    for pos, a in enumerate(ids):
        positions.setdefault(a, []).append(pos)
    for a, where in positions.items():
        if len({ok[p] for p in where}) > 1:
            raise ValueError("samples with the same answer id have different verdicts")
    free = len(positions[-1]) if abstain and -1 in positions else 0
    voters = {a: where for a, where in positions.items() if not (abstain and a < 0)}
    favourable = 0
    for g, g_pos in voters.items():
        if g < 0 or not ok[g_pos[0]]:
            continue
        others = [where for a, where in voters.items() if a != g]
        for t, p in enumerate(g_pos):
            after_g = len(g_pos) - t - 1  # members of g after p, to pick j - 1 from
            for j in range(1, min(k, after_g + 1) + 1):
                rest = k - j
                poly = [math.comb(free, i) for i in range(min(free, rest) + 1)]
                for where in others:
                    m, a_after = len(where), sum(q > p for q in where)
                    term = [math.comb(m, i) for i in range(min(j - 1, m, rest) + 1)]
                    if j <= rest:
                        term += [0] * (j - len(term)) + [math.comb(a_after, j)]
                    poly = _poly_mul(poly, term, rest)
                if len(poly) > rest:
                    favourable += math.comb(after_g, j - 1) * poly[rest]
    return favourable / math.comb(n, k)


def _poly_mul(a: list[int], b: list[int], degree: int) -> list[int]:
    """Product of two integer polynomials (coefficient lists), truncated after `degree`."""
    out = [0] * min(len(a) + len(b) - 1, degree + 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b[: len(out) - i]):
                out[i + j] += x * y
    return out


def _as_matrix(correct: np.ndarray) -> np.ndarray:
    arr = np.asarray(correct, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected a non-empty [problems x samples] matrix, got shape {arr.shape}")
    return arr


def _resample(correct: np.ndarray, rng: np.random.Generator, problems: np.ndarray, *more: np.ndarray | None):
    """Rows `problems` of `correct`, with the samples of each row drawn with replacement;
    with `more` arrays of the same shape (answer ids), a tuple of all of them, resampled
    with the same draws (None stays None)."""
    n_samples = correct.shape[1]
    cols = rng.integers(0, n_samples, size=(len(problems), n_samples))
    if not more:
        return correct[problems[:, None], cols]
    return (correct[problems[:, None], cols],) + tuple(
        None if m is None else m[problems[:, None], cols] for m in more
    )


def _answers_like(correct: np.ndarray, answers: np.ndarray | None) -> np.ndarray | None:
    if answers is None:
        return None
    answers = np.asarray(answers, dtype=np.int64)
    if answers.shape != correct.shape:
        raise ValueError(f"answers {answers.shape} and correct {correct.shape} differ in shape")
    return answers


def _apply(stat: Stat, correct: np.ndarray, answers: np.ndarray | None) -> float:
    return stat(correct) if answers is None else stat(correct, answers)


def bootstrap_ci(
    correct: np.ndarray,
    stat: Stat = avg_at_n,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    answers: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile interval of `stat` under a two-level bootstrap: problems are drawn
    with replacement, then samples within each drawn problem. Returns (low, high).

    Any statistic of the matrix works: `partial(mean_pass_at_k, k=4)` for pass@4. With
    `answers` (answer ids, same shape) the samples' answers are resampled with their
    verdicts and `stat` is called as stat(correct, answers): `partial(maj_at_k, k=4)`.
    (A resampled problem may hold a sample twice; estimators then treat the copies as
    two draws, which is what the bootstrap's plug-in distribution says they are.)"""
    correct = _as_matrix(correct)
    answers = _answers_like(correct, answers)
    rng = np.random.default_rng(seed)
    n_problems = correct.shape[0]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        problems = rng.integers(0, n_problems, size=n_problems)
        if answers is None:
            stats[b] = stat(_resample(correct, rng, problems))
        else:
            stats[b] = stat(*_resample(correct, rng, problems, answers))
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedResult:
    """b − a with a bootstrap interval and a two-sided p-value for "no difference"."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    stat: Stat = avg_at_n,
    answers_a: np.ndarray | None = None,
    answers_b: np.ndarray | None = None,
) -> PairedResult:
    """Paired bootstrap of stat(b) − stat(a) for two result matrices on the same
    problems (same row order; sample counts may differ). The same problems are
    drawn for both in each replicate; samples are redrawn within each problem.
    With answer ids for both (`answers_a`, `answers_b`), `stat` is called as
    stat(correct, answers), as in `bootstrap_ci` (maj@k).

    The p-value tests delta = 0 by recentring the bootstrap distribution on zero:
    p = (1 + #{|δ*_i − δ| >= |δ|}) / (1 + n_boot).
    """
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must cover the same problems: {a.shape[0]} vs {b.shape[0]} rows")
    if (answers_a is None) != (answers_b is None):
        raise ValueError("give answer ids for both a and b, or for neither")
    ans_a, ans_b = _answers_like(a, answers_a), _answers_like(b, answers_b)
    rng = np.random.default_rng(seed)
    delta = _apply(stat, b, ans_b) - _apply(stat, a, ans_a)
    n_problems = a.shape[0]
    deltas = np.empty(n_boot)
    for i in range(n_boot):
        problems = rng.integers(0, n_problems, size=n_problems)
        if ans_a is None:
            deltas[i] = stat(_resample(b, rng, problems)) - stat(_resample(a, rng, problems))
        else:
            deltas[i] = stat(*_resample(b, rng, problems, ans_b)) - stat(*_resample(a, rng, problems, ans_a))
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    # A tolerance keeps exact ties (identical inputs: every δ* = δ = 0) on the "as extreme" side.
    extreme = np.abs(deltas - delta) >= abs(delta) - 1e-12
    p_value = (1 + int(extreme.sum())) / (1 + n_boot)
    return PairedResult(float(delta), float(low), float(high), float(min(1.0, p_value)), n_boot)
