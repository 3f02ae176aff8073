"""`mix`: the first stage, made from `data.sources` and `data.mix`.

Without `mix.size` every row of every source is kept. With it, each source
gets a quota proportional to its weight (largest remainder, so the quotas add
up to `size` exactly); a source with fewer rows than its quota is upsampled
(whole passes, then a seeded sample) and one with more is sampled without
replacement. The result is shuffled with `mix.seed`. Everything is seeded per
source name, so adding a source does not reshuffle the others' picks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pydantic import Field

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op
from data_pipeline.sources import load_source, resolve_revision


class MixParams(OpParams):
    sources: dict[str, dict[str, Any]]
    size: int | None = None
    seed: int = 0
    base_dir: str = Field(default=".", exclude=True)  # where relative source paths start; not fingerprinted


def _revisions(p: MixParams) -> dict[str, str]:
    return {name: resolve_revision(spec, Path(p.base_dir)) for name, spec in sorted(p.sources.items())}


def quotas(weights: dict[str, float], size: int) -> dict[str, int]:
    total = sum(weights.values())
    exact = {k: size * w / total for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    rest = size - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:rest]:
        out[k] += 1
    return out


@register_op("mix", version="1", params=MixParams, kind="source", fingerprint_extra=_revisions)
def mix(params: MixParams, ctx: OpContext) -> OpResult:
    """Load and mix the recipe's sources."""
    base = Path(params.base_dir)
    loaded = {name: load_source(name, spec, base) for name, spec in params.sources.items()}
    stats: dict[str, float] = {f"source_rows/{n}": len(r) for n, r in loaded.items()}
    if params.size is None:
        rows = [r for n in sorted(loaded) for r in loaded[n]]
    else:
        want = quotas({n: float(params.sources[n].get("weight") or 0) for n in loaded}, params.size)
        rows = []
        for name in sorted(loaded):
            src, q = loaded[name], want[name]
            rng = random.Random(f"mix:{params.seed}:{name}")
            if not src:
                continue
            passes, rem = divmod(q, len(src))
            picked = src * passes + rng.sample(src, rem)
            stats[f"mixed_rows/{name}"] = len(picked)
            if passes:
                stats[f"upsampled_rows/{name}"] = len(picked) - len(src)
            rows += [dict(r) for r in picked]
    random.Random(f"mix:{params.seed}").shuffle(rows)
    return OpResult(rows, [], stats)
