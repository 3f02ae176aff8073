"""Accuracy metrics over a [problems x samples] matrix of 0/1 verdicts.

- `pass_at_k`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  in its numerically stable product form (never 1 - (1 - p)^k, which is biased).
- `avg_at_n`: mean over samples per problem, then over problems (pass@1 with n samples).
- `bootstrap_ci`: a two-level bootstrap (problems, then samples within problems).
- `paired_bootstrap`: the difference between two result matrices on the same problems,
  with an interval and a two-sided p-value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

Stat = Callable[[np.ndarray], float]


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


def _as_matrix(correct: np.ndarray) -> np.ndarray:
    arr = np.asarray(correct, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected a non-empty [problems x samples] matrix, got shape {arr.shape}")
    return arr


def _resample(correct: np.ndarray, rng: np.random.Generator, problems: np.ndarray) -> np.ndarray:
    """Rows `problems` of `correct`, with the samples of each row drawn with replacement."""
    n_samples = correct.shape[1]
    cols = rng.integers(0, n_samples, size=(len(problems), n_samples))
    return correct[problems[:, None], cols]


def bootstrap_ci(
    correct: np.ndarray,
    stat: Stat = avg_at_n,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile interval of `stat` under a two-level bootstrap: problems are drawn
    with replacement, then samples within each drawn problem. Returns (low, high)."""
    correct = _as_matrix(correct)
    rng = np.random.default_rng(seed)
    n_problems = correct.shape[0]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        problems = rng.integers(0, n_problems, size=n_problems)
        stats[b] = stat(_resample(correct, rng, problems))
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
) -> PairedResult:
    """Paired bootstrap of stat(b) − stat(a) for two result matrices on the same
    problems (same row order; sample counts may differ). The same problems are
    drawn for both in each replicate; samples are redrawn within each problem.

    The p-value tests delta = 0 by recentring the bootstrap distribution on zero:
    p = (1 + #{|δ*_i − δ| >= |δ|}) / (1 + n_boot).
    """
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must cover the same problems: {a.shape[0]} vs {b.shape[0]} rows")
    rng = np.random.default_rng(seed)
    delta = stat(b) - stat(a)
    n_problems = a.shape[0]
    deltas = np.empty(n_boot)
    for i in range(n_boot):
        problems = rng.integers(0, n_problems, size=n_problems)
        deltas[i] = stat(_resample(b, rng, problems)) - stat(_resample(a, rng, problems))
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    # A tolerance keeps exact ties (identical inputs: every δ* = δ = 0) on the "as extreme" side.
    extreme = np.abs(deltas - delta) >= abs(delta) - 1e-12
    p_value = (1 + int(extreme.sum())) / (1 + n_boot)
    return PairedResult(float(delta), float(low), float(high), float(min(1.0, p_value)), n_boot)
