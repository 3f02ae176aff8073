"""`decontaminate`: drop questions that overlap a benchmark of the eval harness.

One list of benchmarks for both: the eval harness's registry
(`eval.benchmarks`). Texts are compared after the math-aware normalisation of
`curation.text` (LaTeX spacing, `\\left`/`\\right`, `\\dfrac`, math delimiters,
digit grouping, number words):

- **n-gram overlap**: a row is contaminated when its problem shares a word
  n-gram (`ngram`, 8) with a benchmark problem. Benchmark problems shorter
  than `ngram` tokens are matched as a whole token sequence, so short problems
  are not waved through as they are by a plain 8-gram check.
- **fuzzy ratio** for short problems (up to `fuzzy_max_tokens` tokens), whose
  few n-grams a reworded opening can all break: the normalised row is compared
  with the benchmark problems of similar length by rapidfuzz's normalised
  Indel similarity; `fuzzy_threshold` or more is a hit.
- optionally (`fields: [problem, answer]`) the row's `answer` text against the
  benchmarks' answers and reference solutions by n-grams, when it is at least
  `ngram` tokens long (a short answer such as `42` says nothing).

Each dropped row records `contamination` in its `meta` (benchmark, benchmark
row id, method, matched text or score); the stats count hits per benchmark and
per method, and the dataset card lists them with examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator

from curation.text import normalise, tokens
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class DecontaminateParams(OpParams):
    benchmarks: list[str] = Field(min_length=1)
    ngram: int = Field(default=8, ge=3, le=64)
    min_overlap: float = Field(default=0.5, gt=0, le=1)  # share of a benchmark text's n-grams found in the row
    fields: list[Literal["problem", "answer"]] = ["problem"]
    fuzzy: bool = True
    fuzzy_threshold: float = Field(default=0.85, gt=0, le=1)
    fuzzy_max_tokens: int = Field(default=40, ge=1)

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


Hit = tuple[str, str]  # (benchmark, benchmark row id)


@lru_cache(maxsize=16)
def _ngram_index(benchmarks: tuple[str, ...], n: int, fields: tuple[str, ...], whole_short: bool):
    """(gram -> indices of the benchmark texts containing it, [(hit, number of
    distinct grams of that text)]). With `whole_short`, texts shorter than n
    tokens are indexed as one gram of their own length."""
    from eval.benchmarks import benchmark_texts

    index: dict[tuple[str, ...], list[int]] = {}
    texts: list[tuple[Hit, int, Counter]] = []
    sizes: set[int] = set()
    for b in benchmarks:
        for field in fields:
            for row_id, text in benchmark_texts(b, field):
                toks = tokens(text)
                if not toks or (len(toks) < n and not whole_short):
                    continue
                sizes.add(min(n, len(toks)))
                grams = _grams(toks, min(n, len(toks)))
                for g in grams:
                    index.setdefault(g, []).append(len(texts))
                texts.append(((b, row_id), len(grams), numbers(toks)))
    return index, texts, sorted(sizes)


@lru_cache(maxsize=16)
def _short_problems(benchmarks: tuple[str, ...], max_tokens: int) -> list[tuple[int, str, Hit, Counter]]:
    """(token count, normalised text, hit) of benchmark problems short enough
    for the fuzzy check (with a margin, since a reworded copy may be longer)."""
    from eval.benchmarks import benchmark_texts

    out = []
    for b in benchmarks:
        for row_id, text in benchmark_texts(b, "problem"):
            n = len(tokens(text))
            if n <= max_tokens * 1.5:
                out.append((n, _strip_opening(normalise(text)), (b, row_id), numbers(tokens(text))))
    return out


def numbers(toks: list[str]) -> Counter:
    """The multiset of numbers of a normalised text."""
    return Counter(t for t in toks if t[0].isdigit())


def same_numbers(a: Counter, b: Counter, min_share: float = 0.8) -> bool:
    """Whether two texts use (almost) the same numbers. A copy with light edits
    keeps its numbers; a templated sibling ("Evaluate log_5 625" and
    "Evaluate log_8 2") does not, and is a different problem."""
    if not a and not b:
        return True
    inter = sum((a & b).values())
    return inter / max(sum(a.values()), sum(b.values())) >= min_share


def _ngram_hit(toks: list[str], n: int, index, min_overlap: float) -> tuple[Hit, float] | None:
    """The benchmark text that shares the largest share of its n-grams with
    `toks`, if that share reaches `min_overlap`. A shared gram or two is
    boilerplate ("express your answer as a common fraction"); a copy shares
    most of them."""
    grams, texts, sizes = index
    nums = numbers(toks)
    shared: dict[int, int] = {}
    for size in sizes:
        for g in _grams(toks, size):
            for t in grams.get(g, ()):
                shared[t] = shared.get(t, 0) + 1
    best = None
    for t, k in shared.items():
        hit, total, their_nums = texts[t]
        score = k / total
        if score >= min_overlap and (best is None or score > best[1]) and same_numbers(nums, their_nums):
            best = (hit, score)
    return best


_OPENING = re.compile(r"^(?:find|compute|calculate|evaluate|determine|simplify|solve|what is|how many|suppose( that)?|let)\b\s*")


def _strip_opening(text: str) -> str:
    """The normalised text without a leading instruction ("compute", "what is"):
    in a one-line problem a reworded opening is a large share of the characters."""
    return _OPENING.sub("", text)


def _fuzzy_hit(text: str, toks: list[str], short: list[tuple[int, str, Hit, Counter]], threshold: float
               ) -> tuple[Hit, float] | None:
    from rapidfuzz import fuzz  # C++ Indel ratio: ~1 µs a pair

    best: tuple[Hit, float] | None = None
    nums = numbers(toks)
    for n, other, hit, their_nums in short:
        if abs(n - len(toks)) > max(3, 0.3 * len(toks)) or not same_numbers(nums, their_nums):
            continue
        score = fuzz.ratio(text, other, score_cutoff=threshold * 100) / 100
        if score and (best is None or score > best[1]):
            best = (hit, score)
    return best


def _benchmark_data(p: DecontaminateParams) -> dict[str, str]:
    from eval.benchmarks import BenchmarkDataMissing, benchmark_texts, get_benchmark

    out = {}
    for b in p.benchmarks:
        try:
            texts = [t for f in ("problem", "answer", "solution") for _, t in benchmark_texts(b, f)]
        except BenchmarkDataMissing as e:  # the fingerprint hashes the rows: name the field that needs them
            raise BenchmarkDataMissing(f"decontaminate: benchmarks: {b}: {e}") from None
        out[b] = f"{get_benchmark(b).version}:" + hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    return out


def find_contamination(problem: str, answer: str | None, params: DecontaminateParams) -> dict | None:
    """The first benchmark overlap of one row, or None."""
    bench = tuple(params.benchmarks)
    toks = tokens(problem or "")
    if "problem" in params.fields and toks:
        found = _ngram_hit(toks, params.ngram, _ngram_index(bench, params.ngram, ("problem",), True),
                           params.min_overlap)
        if found:
            (b, rid), score = found
            return {"benchmark": b, "id": rid, "method": "ngram", "field": "problem", "score": round(score, 4)}
        if params.fuzzy and len(toks) <= params.fuzzy_max_tokens:
            fz = _fuzzy_hit(_strip_opening(normalise(problem)), toks, _short_problems(bench, params.fuzzy_max_tokens),
                            params.fuzzy_threshold)
            if fz:
                (b, rid), score = fz
                return {"benchmark": b, "id": rid, "method": "fuzzy", "field": "problem", "score": round(score, 4)}
    if "answer" in params.fields and answer:
        atoks = tokens(answer)
        if len(atoks) >= params.ngram:
            found = _ngram_hit(atoks, params.ngram, _ngram_index(bench, params.ngram, ("answer", "solution"), False),
                               params.min_overlap)
            if found:
                (b, rid), score = found
                return {"benchmark": b, "id": rid, "method": "ngram", "field": "answer", "score": round(score, 4)}
    return None


@register_op("decontaminate", version="2", params=DecontaminateParams, kind="map", fingerprint_extra=_benchmark_data)
def decontaminate(rows: list[dict], params: DecontaminateParams, ctx: OpContext) -> OpResult:
    """Drop rows whose problem (or answer) overlaps a benchmark."""
    kept, dropped = [], []
    stats: dict[str, float] = {f"hits/{b}": 0 for b in params.benchmarks}
    for r in rows:
        hit = find_contamination(r.get("problem") or "", r.get("answer"), params)
        if hit is None:
            kept.append(r)
            continue
        meta = json.loads(r.get("meta") or "{}")
        meta["contamination"] = hit
        dropped.append((dict(r, meta=json.dumps(meta, sort_keys=True)), f"contaminated:{hit['benchmark']}"))
        stats[f"hits/{hit['benchmark']}"] += 1
        key = f"hits_by/{hit['method']}_{hit['field']}"
        stats[key] = stats.get(key, 0) + 1
    return OpResult(kept, dropped, stats)
