"""`dedup`: exact deduplication on normalised problem text.

The first occurrence in stage order is kept (the mix order is seeded, so the
rule is deterministic); later copies are dropped with reason `exact_duplicate`
and their kept twin's id recorded in the dropped row's `meta`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op
from curation.text import normalise


class DedupParams(OpParams):
    method: Literal["exact"] = "exact"
    field: Literal["problem"] = "problem"


@register_op("dedup", version="1", params=DedupParams, kind="global")
def dedup(rows: list[dict], params: DedupParams, ctx: OpContext) -> OpResult:
    """Drop rows whose normalised problem was seen before."""
    first: dict[str, str] = {}
    kept, dropped = [], []
    for r in rows:
        key = hashlib.sha256(normalise(r.get(params.field) or "").encode()).hexdigest()
        if key in first:
            meta = json.loads(r.get("meta") or "{}")
            meta["duplicate_of"] = first[key]
            dropped.append((dict(r, meta=json.dumps(meta, sort_keys=True)), "exact_duplicate"))
        else:
            first[key] = r["id"]
            kept.append(r)
    return OpResult(kept, dropped, {"clusters": len(first)})
