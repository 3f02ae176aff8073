"""`verify`: judge every teacher sample against the gold answer with
math-verify, and choose which samples go into the SFT data.

`keep: correct` selects only correct samples and drops questions with none;
`any_correct` keeps every sample of a question that has at least one correct
one; `all` keeps everything (verification off, verdicts still recorded so the
card shows the teacher's accuracy). Truncated samples (finish_reason
"length") are never selected under `correct`/`any_correct`. Questions without
a gold answer are dropped unless `keep: all`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data_pipeline.fingerprint import canonical_json, sha256_hex
from data_pipeline.kvstore import KVStore
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class VerifyParams(OpParams):
    method: Literal["math"] = "math"
    keep: Literal["correct", "any_correct", "all"] = "correct"
    timeout_s: float = Field(default=5.0, gt=0)


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


@register_op("verify", version="1", params=VerifyParams, kind="map", self_parallel=True)
def verify(rows: list[dict], params: VerifyParams, ctx: OpContext) -> OpResult:
    """Record a verdict per sample; select samples by the `keep` policy."""
    kept, dropped = [], []
    stats: dict[str, float] = {}
    rows = [dict(r, responses=[dict(x) for x in r.get("responses") or []]) for r in rows]
    todo = [(x, r["answer"]) for r in rows for x in r["responses"] if x["finish_reason"] != "error" and r.get("answer")]
    scores, cached = cached_scores([(gold, x["text"] or "") for x, gold in todo], params, ctx)
    stats["verdicts_scored"], stats["verdicts_cached"] = len(scores) - cached, cached
    for (x, _), sc in zip(todo, scores):
        verdict = "correct" if sc.correct else ("timeout" if sc.status == "timeout" else
                                                 "no_answer" if sc.extracted is None else "incorrect")
        if x["finish_reason"] == "length" and verdict == "correct":
            verdict = "truncated"
        x["verdict"], x["extracted"] = verdict, sc.extracted
    for r in rows:
        gold = r.get("answer")
        responses = r["responses"]
        for x in responses:
            if x["finish_reason"] == "error":
                x["verdict"] = "error"
            elif not gold:
                x["verdict"] = "unverified"
            verdict = x["verdict"]
            stats[f"verdict/{verdict}"] = stats.get(f"verdict/{verdict}", 0) + 1
        any_ok = any(x["verdict"] == "correct" for x in responses)
        for x in responses:
            # Narrows the selection, never widens it (distill may have
            # deselected truncated samples: on_truncated=drop).
            if params.keep == "correct":
                ok = x["verdict"] == "correct"
            elif params.keep == "any_correct":
                ok = any_ok and x["finish_reason"] == "stop"
            else:
                ok = x["finish_reason"] != "error"
            x["selected"] = bool(x.get("selected", True)) and ok
        row = dict(r, responses=responses)
        if params.keep != "all" and not gold:
            dropped.append((row, "no_gold_answer"))
        elif not any(x["selected"] for x in responses):
            dropped.append((row, "no_correct_sample" if params.keep != "all" else "no_usable_sample"))
        else:
            kept.append(row)
    return OpResult(kept, dropped, stats)
