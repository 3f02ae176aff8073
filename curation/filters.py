"""`filter`: drop malformed or out-of-range questions, each with its reason."""

from __future__ import annotations

from pydantic import Field

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class FilterParams(OpParams):
    min_chars: int = Field(default=1, ge=0)
    max_chars: int = Field(default=20_000, gt=0)
    require_answer: bool = True


@register_op("filter", version="1", params=FilterParams, kind="map")
def filter_rows(rows: list[dict], params: FilterParams, ctx: OpContext) -> OpResult:
    """Drop rows with an empty, too short or too long problem, or no gold answer."""
    kept, dropped = [], []
    for r in rows:
        problem = (r.get("problem") or "").strip()
        answer = (r.get("answer") or "").strip()
        if not problem:
            dropped.append((r, "empty_problem"))
        elif len(problem) < params.min_chars:
            dropped.append((r, "too_short"))
        elif len(problem) > params.max_chars:
            dropped.append((r, "too_long"))
        elif params.require_answer and not answer:
            dropped.append((r, "no_answer"))
        else:
            kept.append(r)
    return OpResult(kept, dropped)
