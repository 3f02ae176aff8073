"""`decontaminate`: drop questions that overlap a benchmark of the eval harness.

One list of benchmarks for both (the eval harness's registry): a row is
contaminated when it shares a word n-gram with a benchmark problem after the
math-aware normalisation of `curation.text`. Problems shorter than `ngram`
tokens are matched as a whole token sequence, so short problems (AIME one-liners,
nano arithmetic) are not waved through, as they are by a plain 8-gram check.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from pydantic import Field, field_validator

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op
from curation.text import tokens


class DecontaminateParams(OpParams):
    benchmarks: list[str] = Field(min_length=1)
    ngram: int = Field(default=8, ge=3, le=64)

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from eval.benchmarks import BENCHMARKS

        unknown = [b for b in v if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; registered: {sorted(BENCHMARKS)}")
        return v


def _grams(toks: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(toks[i: i + n]) for i in range(len(toks) - n + 1)}


@lru_cache(maxsize=8)
def _index(benchmarks: tuple[str, ...], n: int) -> dict[int, dict[tuple[str, ...], str]]:
    """gram length -> gram -> benchmark name."""
    from eval.benchmarks import benchmark_problems

    index: dict[int, dict[tuple[str, ...], str]] = {}
    for b in benchmarks:
        for problem in benchmark_problems(b):
            toks = tokens(problem)
            if not toks:
                continue
            size = min(n, len(toks))
            bucket = index.setdefault(size, {})
            for g in _grams(toks, size):
                bucket.setdefault(g, b)
    return index


def _benchmark_data(p: DecontaminateParams) -> dict[str, str]:
    from eval.benchmarks import benchmark_problems, get_benchmark

    return {
        b: f"{get_benchmark(b).version}:" + hashlib.sha256("\x00".join(benchmark_problems(b)).encode()).hexdigest()[:16]
        for b in p.benchmarks
    }


@register_op("decontaminate", version="1", params=DecontaminateParams, kind="map", fingerprint_extra=_benchmark_data)
def decontaminate(rows: list[dict], params: DecontaminateParams, ctx: OpContext) -> OpResult:
    """Drop rows whose problem shares an n-gram with a benchmark problem."""
    index = _index(tuple(params.benchmarks), params.ngram)
    kept, dropped = [], []
    hits: dict[str, float] = {}
    for r in rows:
        toks = tokens(r.get("problem") or "")
        hit = None
        for size, bucket in index.items():
            for g in _grams(toks, size):
                if g in bucket:
                    hit = bucket[g]
                    break
            if hit:
                break
        if hit:
            dropped.append((r, f"contaminated:{hit}"))
            hits[f"hits/{hit}"] = hits.get(f"hits/{hit}", 0) + 1
        else:
            kept.append(r)
    return OpResult(kept, dropped, hits)
