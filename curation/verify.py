"""`verify`: judge every teacher sample, and choose which samples go into the
SFT data.

Methods:
- `math`: math-verify against the reference answer, in worker processes with a
  wall-clock deadline per sample (eval.scoring.score_many). The reference is the
  gold answer (`reference: gold`); for sources without one, `majority` takes
  the answer most of the teacher's samples agree on (equivalence by
  math-verify, at least `min_agreement` of the samples), and
  `gold_or_majority` uses the gold where there is one. A row verified against a
  majority records it in `meta.reference` (kind, answer, votes, samples).
- `multiple_choice`: the option letter (eval.scoring.extract_choice, which never
  reads letters out of words) against the gold letter.
- `code`: the program in the sample's last fenced code block run against the
  row's tests in the sandbox (eval.sandbox); the tests come from the row's
  `meta` field `tests_field` (assert statements, a HumanEval `check` function,
  or stdin/stdout cases).

Every sample keeps its verdict (correct | incorrect | no_answer | truncated |
timeout | error | unverified) and the extracted answer. `keep: correct` selects
only correct samples and drops questions with none; `any_correct` keeps every
finished sample of a question that has at least one correct one; `all` keeps
everything (verification off, verdicts still recorded so the card shows the
teacher's accuracy). Selection only narrows what earlier stages selected.
Questions without a reference are dropped unless `keep: all`.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

from pydantic import Field, model_validator

from data_pipeline.fingerprint import canonical_json, sha256_hex
from data_pipeline.kvstore import KVStore
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class VerifyParams(OpParams):
    method: Literal["math", "multiple_choice", "code"] = "math"
    keep: Literal["correct", "any_correct", "all"] = "correct"
    reference: Literal["gold", "majority", "gold_or_majority"] = "gold"
    min_agreement: float = Field(default=0.5, gt=0, le=1)  # majority: share of samples that must agree
    timeout_s: float = Field(default=5.0, gt=0)  # per math sample; per test for code
    letters: str = Field(default="ABCD", pattern=r"^[A-Z]{2,26}$")  # multiple_choice
    tests_field: str = "tests"  # code: the meta field holding the tests
    total_timeout_s: float = Field(default=60.0, gt=0)  # code: per program

    @model_validator(mode="after")
    def _majority_is_math(self) -> "VerifyParams":
        if self.reference != "gold" and self.method == "code":
            raise ValueError("majority references apply to math and multiple_choice answers, not to code")
        return self


def _scorer_version() -> str:
    import math_verify

    from eval.harness import HARNESS_VERSION

    return f"math-verify {getattr(math_verify, '__version__', '?')}; harness {HARNESS_VERSION}"


def cached_scores(pairs: list[tuple[str, str]], params: VerifyParams, ctx: OpContext):
    """Scores of (gold, response) pairs, each computed once: a verdict is a pure
    function of the pair and the scorer, so an ablation that only changes the
    `keep` policy (or a rerun) reads them from `<cache>/verdicts.sqlite`.
    Timeouts are not stored, so a rerun tries them again."""
    from eval.scoring import Score, score_many

    version = _scorer_version()
    keys = [sha256_hex(canonical_json([version, params.method, g, r])) for g, r in pairs]
    store = KVStore(ctx.cache_root / "verdicts.sqlite", "verdicts")
    try:
        found = {k: Score(*v) for k, v in store.get_many(keys).items()}
        missing = [i for i, k in enumerate(keys) if k not in found]
        fresh = score_many([pairs[i] for i in missing], workers=ctx.workers, timeout_s=params.timeout_s)
        store.put_many([(keys[i], list(sc)) for i, sc in zip(missing, fresh) if sc.status != "timeout"])
    finally:
        store.close()
    cached = len(keys) - len(missing)
    found.update({keys[i]: sc for i, sc in zip(missing, fresh)})
    return [found[k] for k in keys], cached


def _verdict(correct: bool, extracted: str | None, status: str, finish_reason: str) -> str:
    verdict = "correct" if correct else ("timeout" if status == "timeout" else
                                         "no_answer" if extracted is None else "incorrect")
    return "truncated" if finish_reason == "length" and verdict == "correct" else verdict


def _math_majority(rows: list[dict], todo_rows: list[int], params: VerifyParams, ctx: OpContext,
                   stats: dict[str, float]) -> dict[int, dict]:
    """Majority references for rows without gold: each sample's boxed answer is
    a candidate; every sample is scored against every distinct candidate of its
    question (cached like any verdict); the candidate most samples agree with
    wins, ties to the earliest sample. Returns row index -> reference."""
    from eval.scoring import answer_region, last_boxed

    pairs, owners = [], []
    candidates: dict[int, list[str]] = {}
    for i in todo_rows:
        texts = [x["text"] or "" for x in rows[i]["responses"] if x["finish_reason"] == "stop"]
        cands = list(dict.fromkeys(c for c in (last_boxed(answer_region(t)) for t in texts) if c))
        candidates[i] = cands
        for c_index, cand in enumerate(cands):
            for t in texts:
                pairs.append((cand, t))
                owners.append((i, c_index))
    scores, cached = cached_scores(pairs, params, ctx)
    stats["verdicts_scored"] = stats.get("verdicts_scored", 0) + len(scores) - cached
    stats["verdicts_cached"] = stats.get("verdicts_cached", 0) + cached
    votes: dict[tuple[int, int], int] = Counter()
    for owner, sc in zip(owners, scores):
        votes[owner] += bool(sc.correct)
    refs = {}
    for i, cands in candidates.items():
        n = sum(1 for x in rows[i]["responses"] if x["finish_reason"] != "error")
        if not cands or not n:
            continue
        best = max(range(len(cands)), key=lambda c: (votes[(i, c)], -c))
        if votes[(i, best)] / n >= params.min_agreement:
            refs[i] = {"kind": "majority", "answer": cands[best], "votes": votes[(i, best)], "samples": n}
    return refs


def _majority_choice(rows: list[dict], todo_rows: list[int], params: VerifyParams) -> dict[int, dict]:
    from eval.scoring import extract_choice

    refs = {}
    for i in todo_rows:
        picks = [extract_choice(x["text"] or "", params.letters) for x in rows[i]["responses"]
                 if x["finish_reason"] != "error"]
        counted = Counter(p for p in picks if p)
        if counted and picks:
            letter, n = max(counted.items(), key=lambda kv: (kv[1], -ord(kv[0])))
            if n / len(picks) >= params.min_agreement:
                refs[i] = {"kind": "majority", "answer": letter, "votes": n, "samples": len(picks)}
    return refs


def _references(rows: list[dict], params: VerifyParams, ctx: OpContext, stats: dict[str, float]) -> dict[int, dict]:
    """row index -> {"kind": "gold"|"majority", "answer": ...} for rows that have one."""
    refs: dict[int, dict] = {}
    if params.reference in ("gold", "gold_or_majority"):
        refs = {i: {"kind": "gold", "answer": r["answer"]} for i, r in enumerate(rows) if (r.get("answer") or "").strip()}
    if params.reference in ("majority", "gold_or_majority"):
        todo = [i for i in range(len(rows)) if i not in refs]
        majority = _math_majority(rows, todo, params, ctx, stats) if params.method == "math" else \
            _majority_choice(rows, todo, params)
        refs.update(majority)
        stats["reference/majority"] = len(majority)
        stats["reference/no_majority"] = len(todo) - len(majority)
    return refs


def _judge_math(rows, refs, params, ctx, stats) -> None:
    todo = [(x, refs[i]["answer"]) for i, r in enumerate(rows) if i in refs
            for x in r["responses"] if x["finish_reason"] != "error"]
    scores, cached = cached_scores([(ref, x["text"] or "") for x, ref in todo], params, ctx)
    stats["verdicts_scored"] = stats.get("verdicts_scored", 0) + len(scores) - cached
    stats["verdicts_cached"] = stats.get("verdicts_cached", 0) + cached
    for (x, _), sc in zip(todo, scores):
        x["verdict"], x["extracted"] = _verdict(sc.correct, sc.extracted, sc.status, x["finish_reason"]), sc.extracted


def _judge_choice(rows, refs, params) -> None:
    from eval.scoring import extract_choice

    for i, r in enumerate(rows):
        if i not in refs:
            continue
        gold = refs[i]["answer"].strip().strip("()").upper()
        for x in r["responses"]:
            if x["finish_reason"] == "error":
                continue
            pick = extract_choice(x["text"] or "", params.letters)
            x["verdict"], x["extracted"] = _verdict(pick == gold, pick, "ok", x["finish_reason"]), pick


def _judge_code(rows, refs, params, ctx, stats) -> None:
    from eval.sandbox import extract_code, score_code_many

    items, targets = [], []
    for i, r in enumerate(rows):
        tests = json.loads(r.get("meta") or "{}").get(params.tests_field)
        if not tests:
            continue
        refs[i] = {"kind": "tests"}
        for x in r["responses"]:
            if x["finish_reason"] == "error":
                continue
            code = extract_code(x["text"] or "")
            if code is None:
                x["verdict"], x["extracted"] = "no_answer", None
                continue
            # a list of asserts, a test script, or {tests|cases, entry_point?, setup?}
            items.append({"program": code, **(tests if isinstance(tests, dict) else {"tests": tests})})
            targets.append(x)
    for x, v in zip(targets, score_code_many(items, workers=max(1, ctx.workers),
                                              per_test_timeout_s=params.timeout_s,
                                              total_timeout_s=params.total_timeout_s)):
        status = v.status if not v.passed else "ok"
        x["verdict"] = _verdict(v.passed, "program", status, x["finish_reason"])
        x["extracted"] = f"{v.n_passed}/{v.n_total} tests"
        stats[f"code/{v.status}"] = stats.get(f"code/{v.status}", 0) + 1


@register_op("verify", version="2", params=VerifyParams, kind="map", self_parallel=True)
def verify(rows: list[dict], params: VerifyParams, ctx: OpContext) -> OpResult:
    """Record a verdict per sample; select samples by the `keep` policy."""
    kept, dropped = [], []
    stats: dict[str, float] = {}
    rows = [dict(r, responses=[dict(x) for x in r.get("responses") or []]) for r in rows]
    if params.method == "code":
        refs: dict[int, dict] = {}
        _judge_code(rows, refs, params, ctx, stats)
    else:
        refs = _references(rows, params, ctx, stats)
        if params.method == "math":
            _judge_math(rows, refs, params, ctx, stats)
        else:
            _judge_choice(rows, refs, params)
    for i, r in enumerate(rows):
        responses = r["responses"]
        for x in responses:
            if x["finish_reason"] == "error":
                x["verdict"] = "error"
            elif i not in refs:
                x["verdict"] = "unverified"
            verdict = x["verdict"]
            stats[f"verdict/{verdict}"] = stats.get(f"verdict/{verdict}", 0) + 1
        any_ok = any(x["verdict"] == "correct" for x in responses)
        for x in responses:
            # Narrows the selection, never widens it (distill or filter may
            # have deselected samples).
            if params.keep == "correct":
                ok = x["verdict"] == "correct"
            elif params.keep == "any_correct":
                ok = any_ok and x["finish_reason"] == "stop"
            else:
                ok = x["finish_reason"] != "error"
            x["selected"] = bool(x.get("selected", True)) and ok
        row = dict(r, responses=responses)
        if i in refs and refs[i]["kind"] == "majority":
            meta = json.loads(row.get("meta") or "{}")
            meta["reference"] = refs[i]
            row["meta"] = json.dumps(meta, sort_keys=True)
        if params.keep != "all" and i not in refs:
            reason = "no_tests" if params.method == "code" else \
                "no_reference" if params.reference != "gold" else "no_gold_answer"
            dropped.append((row, reason))
        elif not any(x["selected"] for x in responses):
            dropped.append((row, "no_correct_sample" if params.keep != "all" else "no_usable_sample"))
        else:
            kept.append(row)
    return OpResult(kept, dropped, stats)
