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

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class VerifyParams(OpParams):
    method: Literal["math"] = "math"
    keep: Literal["correct", "any_correct", "all"] = "correct"
    timeout_s: float = Field(default=5.0, gt=0)


@register_op("verify", version="1", params=VerifyParams, kind="map", self_parallel=True)
def verify(rows: list[dict], params: VerifyParams, ctx: OpContext) -> OpResult:
    """Record a verdict per sample; select samples by the `keep` policy."""
    from eval.scoring import score_many

    kept, dropped = [], []
    stats: dict[str, float] = {}
    rows = [dict(r, responses=[dict(x) for x in r.get("responses") or []]) for r in rows]
    todo = [(x, r["answer"]) for r in rows for x in r["responses"] if x["finish_reason"] != "error" and r.get("answer")]
    scores = score_many([(gold, x["text"] or "") for x, gold in todo], workers=ctx.workers, timeout_s=params.timeout_s)
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
            if params.keep == "correct":
                x["selected"] = x["verdict"] == "correct"
            elif params.keep == "any_correct":
                x["selected"] = any_ok and x["finish_reason"] == "stop"
            else:
                x["selected"] = x["finish_reason"] != "error"
        row = dict(r, responses=responses)
        if params.keep != "all" and not gold:
            dropped.append((row, "no_gold_answer"))
        elif not any(x["selected"] for x in responses):
            dropped.append((row, "no_correct_sample" if params.keep != "all" else "no_usable_sample"))
        else:
            kept.append(row)
    return OpResult(kept, dropped, stats)
