"""`distill`: ask a teacher for `samples` answers per question.

Requests go through the persistent request cache (`<cache>/requests.sqlite`),
keyed by engine identity (engine, model, revision, answer-changing options),
sampling, the rendered messages, the sample index and the seed: a rerun, a run
resumed after `kill -9`, or an ablation that changes only later stages never
pays for an answered request twice. Each answer is stored the moment it
arrives.

The system prompt and the user prompt template are parameters (hashed into the
fingerprint); the rendered conversation is stored per row (`prompt`). Each
sample's seed is derived from (seed, row id, sample index).

Faults: the engine retries connection errors, timeouts, 429 and 5xx with
backoff; a request that keeps failing is kept as a sample with
finish_reason="error" and its reason, never dropped. More failures than
`max_failed_fraction` fail the stage (answers are cached: a rerun sends only
the failed requests). Truncated answers (finish_reason="length") are kept,
deselected (`drop`), or asked again with `retry_max_tokens` (`retry`).

Accounting (stage stats, summed over ranks, and the dataset card): requests
(cached / new), attempts, errors and failures by cause, prompt and completion
tokens of the dataset and of this run, and their cost where `price` is given.
`runtime` (where the teacher is and how hard to push it) and `price` are not
part of the fingerprint: moving a teacher to another server changes no data.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

from data_pipeline.engines import GenerationRequest, Sampling, get_engine
from data_pipeline.engines.request_cache import RequestCache, cached_generate
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op

# Engine options that change the answers (hashed), per engine.
ENGINE_OPTIONS: dict[str, set[str]] = {
    "procedural": set(),
    "transformers": {"dtype"},
    "endpoint": {"api", "extra_body"},
    "vllm": {"dtype", "max_model_len", "chat_template_kwargs"},
}


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=0.7, ge=0, le=5)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=1024, gt=0)


class RuntimeParams(BaseModel):
    """Where the teacher runs and how hard to push it (not hashed)."""

    model_config = ConfigDict(extra="forbid")
    # endpoint
    base_url: str | None = None
    base_url_env: str | None = None
    api_key_env: str | None = None
    concurrency: int = Field(default=16, ge=1, le=4096)
    timeout_s: float = Field(default=600, gt=0)
    max_retries: int = Field(default=6, ge=0, le=100)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    use_n: bool = False
    # in-process engines
    batch_size: int | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, gt=0)
    device: str | None = None
    # vllm
    tensor_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    enforce_eager: bool = False

    @field_validator("api_key_env", "base_url_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not v.replace("_", "").isalnum():
            raise ValueError("must be the name of an environment variable (the value itself never goes in a recipe)")
        return v


class Price(BaseModel):
    """Teacher prices per million tokens (for the cost in stats and card)."""

    model_config = ConfigDict(extra="forbid")
    prompt_per_mtok: float = Field(ge=0)
    completion_per_mtok: float = Field(ge=0)
    currency: str = "USD"


class DistillParams(OpParams):
    UNHASHED: ClassVar[tuple[str, ...]] = ("runtime", "price")

    engine: Literal["procedural", "transformers", "endpoint", "vllm"] = "procedural"
    model: str
    revision: str | None = None
    samples: int = Field(default=1, ge=1, le=256)
    sampling: SamplingParams = SamplingParams()
    system_prompt: str | None = None
    prompt_template: str = "{problem}"
    seed: int = 0
    engine_options: dict[str, Any] = {}
    on_truncated: Literal["keep", "drop", "retry"] = "keep"
    retry_max_tokens: int | None = Field(default=None, gt=0)
    max_failed_fraction: float = Field(default=0.01, ge=0, le=1)
    runtime: RuntimeParams = RuntimeParams()
    price: Price | None = None

    @model_validator(mode="after")
    def _check(self) -> "DistillParams":
        if self.engine == "procedural":
            from data_pipeline.nano.teachers import TEACHERS

            if self.model not in TEACHERS:
                raise ValueError(f"unknown procedural teacher {self.model!r}; known: {sorted(TEACHERS)}")
        unknown = set(self.engine_options) - ENGINE_OPTIONS[self.engine]
        if unknown:
            raise ValueError(f"engine_options {sorted(unknown)} are not options of the {self.engine} engine "
                             f"(known: {sorted(ENGINE_OPTIONS[self.engine]) or 'none'}; "
                             "where and how fast it runs goes in `runtime`)")
        if self.engine == "endpoint" and not (self.runtime.base_url or self.runtime.base_url_env):
            raise ValueError("the endpoint engine needs runtime.base_url or runtime.base_url_env")
        if self.on_truncated == "retry":
            if self.retry_max_tokens is None:
                raise ValueError("on_truncated: retry needs retry_max_tokens")
            if self.retry_max_tokens <= self.sampling.max_tokens:
                raise ValueError("retry_max_tokens must be larger than sampling.max_tokens")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("prompt_template must contain {problem}")
        return v

    def engine_kwargs(self) -> dict[str, Any]:
        runtime = {k: v for k, v in self.runtime.model_dump().items() if v is not None}
        return {**runtime, **self.engine_options}


def sample_seed(seed: int, row_id: str, sample_index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{row_id}:{sample_index}".encode()).digest()[:8], "big") >> 1


def render(params: DistillParams, problem: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
    return msgs + [{"role": "user", "content": params.prompt_template.replace("{problem}", problem)}]


def preflight(params: DistillParams) -> None:
    """Fail at start (not hours in) when the engine cannot run here."""
    from data_pipeline.engines import engine_class

    engine_class(params.engine).preflight(params.engine_kwargs())


def _cost(price: Price | None, prompt: int, completion: int) -> float | None:
    if price is None:
        return None
    return round((prompt * price.prompt_per_mtok + completion * price.completion_per_mtok) / 1e6, 6)


def _in_main_process(params: DistillParams) -> bool:
    # vLLM starts its own engine and tensor-parallel worker processes, and
    # replicated engines their replicas, which datatrove's daemonic pool
    # workers may not do.
    return params.engine == "vllm" or params.runtime.data_parallel_size > 1


@register_op("distill", version="2", params=DistillParams, kind="map", self_parallel=_in_main_process,
             preflight=preflight)
def distill(rows: list[dict], params: DistillParams, ctx: OpContext) -> OpResult:
    """Generate teacher responses (through the request cache)."""
    t0 = time.time()
    engine = get_engine(params.engine, params.model, params.revision, **params.engine_kwargs())
    sampling = Sampling(params.sampling.temperature, params.sampling.top_p, params.sampling.max_tokens)
    cache = RequestCache(ctx.cache_root / "requests.sqlite")
    requests = []
    no_problem = [r for r in rows if not (r.get("problem") or "").strip()]
    rows = [r for r in rows if (r.get("problem") or "").strip()]
    for r in rows:
        msgs = render(params, r["problem"])
        r["prompt"] = msgs
        for s in range(params.samples):
            requests.append(GenerationRequest.from_messages(msgs, s, sample_seed(params.seed, r["id"], s)))
    bar = tqdm(total=len(requests), desc=f"distill[{ctx.rank}]", unit="req", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)
    new: list[Any] = []
    stats: dict[str, float] = {}

    try:
        outs = _generate_counting(engine, cache, requests, sampling, bar, stats, new)
        if params.on_truncated == "retry":
            idx = [i for i, c in enumerate(outs) if c.finish_reason == "length"]
            if idx:
                bigger = Sampling(sampling.temperature, sampling.top_p, params.retry_max_tokens)
                again = _generate_counting(engine, cache, [requests[i] for i in idx], bigger, bar, stats, new,
                                           key="truncated/retry_requests")
                for i, c in zip(idx, again):
                    outs[i] = c
    finally:
        bar.close()
        engine.close()
        cache.close()
    for k, v in engine.counters.items():
        stats[k] = stats.get(k, 0) + v

    kept = []
    failures = 0
    for i, r in enumerate(rows):
        resp = []
        for s in range(params.samples):
            c = outs[i * params.samples + s]
            selected = c.finish_reason != "error"
            if c.finish_reason == "length":
                stats["truncated"] = stats.get("truncated", 0) + 1
                if params.on_truncated == "drop":
                    selected = False
            failures += c.finish_reason == "error"
            if c.reasoning is None and "</think>" in (c.text or "") and "<think>" not in c.text:
                stats["warnings/unopened_think"] = stats.get("warnings/unopened_think", 0) + 1
            resp.append({**c.to_dict(), "sample_index": s, "verdict": None, "extracted": None, "selected": selected})
            stats["prompt_tokens"] = stats.get("prompt_tokens", 0) + c.prompt_tokens
            stats["completion_tokens"] = stats.get("completion_tokens", 0) + c.completion_tokens
            key = f"finish/{c.finish_reason}"
            stats[key] = stats.get(key, 0) + 1
        kept.append(dict(r, responses=resp))
    stats["new_prompt_tokens"] = sum(c.prompt_tokens for c in new)
    stats["new_completion_tokens"] = sum(c.completion_tokens for c in new)
    for prefix in ("", "new_"):
        cost = _cost(params.price, stats[f"{prefix}prompt_tokens"], stats[f"{prefix}completion_tokens"])
        if cost is not None:
            stats[f"{prefix}cost"] = cost
    stats["generation_task_s"] = round(time.time() - t0, 3)
    if stats.get("warnings/unopened_think"):
        # The chat template opened the thought (QwQ) and a server returned the text without a
        # reasoning parser: the answers hold "</think>" but no "<think>", and nothing was split.
        print(f"distill: {stats['warnings/unopened_think']} answers close a thought they never open; serve the "
              "teacher with a reasoning parser (vLLM: --reasoning-parser deepseek_r1) so the thought arrives as "
              "reasoning_content (docs/teachers.md)", file=sys.stderr)
    if requests and failures > params.max_failed_fraction * len(requests):
        causes = ", ".join(f"{k.removeprefix('failed/')}: {v}" for k, v in sorted(stats.items()) if k.startswith("failed/"))
        first = next(c.error for c in outs if c.finish_reason == "error")
        raise RuntimeError(
            f"{failures} of {len(requests)} teacher requests failed ({causes}), more than max_failed_fraction="
            f"{params.max_failed_fraction}. First error: {first}. Answered requests are cached: rerun to send only "
            "the failed ones, or raise max_failed_fraction to keep the failures as error samples.")
    return OpResult(kept, [(r, "empty_problem") for r in no_problem], stats)


def _generate_counting(engine, cache: RequestCache, requests: list[GenerationRequest], sampling: Sampling, bar,
                       stats: dict[str, float], new: list, key: str = "requests") -> list:
    """cached_generate, plus the counts of cached and new requests and the
    completions that were new (for this run's token and cost figures)."""
    hits, misses = cache.hits, cache.misses
    fresh: list = []

    outs = cached_generate(engine, cache, requests, sampling, on_result=bar.update, on_new=fresh.append)
    stats[key] = stats.get(key, 0) + len(requests)
    stats["requests_cached"] = stats.get("requests_cached", 0) + cache.hits - hits
    stats["requests_new"] = stats.get("requests_new", 0) + cache.misses - misses
    new.extend(c for c in fresh if c.finish_reason != "error")
    return outs
