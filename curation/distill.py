"""`distill`: ask a teacher for `samples` answers per question.

Requests go through the persistent request cache (`<cache>/requests.sqlite`),
so a rerun, a resumed run or an ablation that only changes later stages never
pays for a request twice. The rendered conversation is stored per row; each
sample's seed is derived from (seed, row id, sample index).
"""

from __future__ import annotations

import hashlib
import sys

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

from data_pipeline.engines import GenerationRequest, Sampling, get_engine
from data_pipeline.engines.request_cache import RequestCache, cached_generate
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=0.7, ge=0, le=5)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=1024, gt=0)


class DistillParams(OpParams):
    engine: str = "procedural"
    model: str
    revision: str | None = None
    samples: int = Field(default=1, ge=1, le=256)
    sampling: SamplingParams = SamplingParams()
    system_prompt: str | None = None
    prompt_template: str = "{problem}"
    seed: int = 0
    batch_size: int = Field(default=64, gt=0)

    @model_validator(mode="after")
    def _known_teacher(self) -> "DistillParams":
        if self.engine == "procedural":
            from data_pipeline.nano.teachers import TEACHERS

            if self.model not in TEACHERS:
                raise ValueError(f"unknown procedural teacher {self.model!r}; known: {sorted(TEACHERS)}")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("prompt_template must contain {problem}")
        return v


def sample_seed(seed: int, row_id: str, sample_index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{row_id}:{sample_index}".encode()).digest()[:8], "big") >> 1


def render(params: DistillParams, problem: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
    return msgs + [{"role": "user", "content": params.prompt_template.replace("{problem}", problem)}]


@register_op("distill", version="1", params=DistillParams, kind="map")
def distill(rows: list[dict], params: DistillParams, ctx: OpContext) -> OpResult:
    """Generate teacher responses (through the request cache)."""
    engine = get_engine(params.engine, params.model, params.revision)
    sampling = Sampling(params.sampling.temperature, params.sampling.top_p, params.sampling.max_tokens)
    cache = RequestCache(ctx.cache_root / "requests.sqlite")
    requests = []
    for r in rows:
        msgs = render(params, r["problem"])
        r["prompt"] = msgs
        for s in range(params.samples):
            requests.append(GenerationRequest.from_messages(msgs, s, sample_seed(params.seed, r["id"], s)))
    bar = tqdm(total=len(requests), desc=f"distill[{ctx.rank}]", unit="req", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)
    try:
        outs = cached_generate(engine, cache, requests, sampling, params.batch_size, on_batch=bar.update)
    finally:
        bar.close()
        engine.close()
    stats: dict[str, float] = {"requests": len(requests), "requests_cached": cache.hits, "requests_sent": cache.misses}
    cache.close()
    kept = []
    for i, r in enumerate(rows):
        resp = []
        for s in range(params.samples):
            c = outs[i * params.samples + s]
            resp.append({**c.to_dict(), "sample_index": s, "verdict": None, "extracted": None,
                         "selected": c.finish_reason != "error"})
            stats["prompt_tokens"] = stats.get("prompt_tokens", 0) + c.prompt_tokens
            stats["completion_tokens"] = stats.get("completion_tokens", 0) + c.completion_tokens
            key = f"finish/{c.finish_reason}"
            stats[key] = stats.get(key, 0) + 1
        kept.append(dict(r, responses=resp))
    return OpResult(kept, [], stats)
