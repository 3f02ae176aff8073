"""The distill stage: prompts and fingerprints, truncation policy, accounting,
and engines that cannot run here failing at start."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.cache import StageCache
from data_pipeline.errors import PipelineError, RecipeError
from data_pipeline.pipeline import plan, run_data, teacher_summary
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins

load_plugins()


def _recipe(tmp: Path, name: str = "d", **distill) -> Path:
    recipe = {
        "name": name, "version": "1.0.0",
        "data": {"sources": {"arith": {"uri": "nano://arith?levels=2-4", "count": 60, "seed": 1}},
                 "stages": {"dedup": {"method": "exact"},
                            "distill": {"engine": "procedural", "model": "nano-noisy", "samples": 2, **distill},
                            "verify": {"keep": "all"}, "format": {}}},
        "sft": {"model": {"init": "nano-2m"}, "args": {"max_steps": 1, "max_length": 128}},
        "eval": {"benchmarks": ["nano-bench"]},
    }
    d = tmp / "recipes"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(json.dumps(recipe))
    return d / f"{name}.yaml"


def _fp(path: Path) -> str:
    return {s.id: s.fingerprint for s in plan(load_recipe(path))}["distill"]


def test_prompts_are_hashed_runtime_and_price_are_not(tmp_path):
    base = _fp(_recipe(tmp_path))
    assert _fp(_recipe(tmp_path, system_prompt="Think step by step.")) != base
    assert _fp(_recipe(tmp_path, prompt_template="Problem: {problem}\nAnswer in a box.")) != base
    assert _fp(_recipe(tmp_path, sampling={"temperature": 0.3})) != base
    assert _fp(_recipe(tmp_path, on_truncated="drop")) != base
    assert _fp(_recipe(tmp_path, runtime={"concurrency": 64, "batch_size": 8, "max_retries": 2})) == base
    assert _fp(_recipe(tmp_path, price={"prompt_per_mtok": 0.5, "completion_per_mtok": 2.0})) == base


@pytest.mark.parametrize("bad, field", [
    ({"engine": "endpoint", "model": "m"}, "runtime.base_url"),
    ({"on_truncated": "retry"}, "retry_max_tokens"),
    ({"on_truncated": "retry", "retry_max_tokens": 8, "sampling": {"max_tokens": 16}}, "larger"),
    ({"engine": "vllm", "model": "m", "engine_options": {"concurrency": 4}}, "runtime"),
    ({"engine": "endpoint", "model": "m", "runtime": {"base_url": "http://x/v1", "api_key_env": "sk-123 secret"}},
     "name of an environment variable"),
])
def test_bad_distill_settings_are_rejected_at_validation(tmp_path, bad, field):
    with pytest.raises(RecipeError, match=field):
        load_recipe(_recipe(tmp_path, **bad))


def _responses(cache: StageCache, result) -> list[dict]:
    fp = {s.stage.id: s.stage.fingerprint for s in result.stages}["distill"]
    table = pq.read_table(cache.root / "stages" / fp / "data")
    return [x for r in table.column("responses").to_pylist() for x in r]


def _quiet(*a, **k):
    pass


def test_truncated_answers_kept_dropped_or_retried(tmp_path):
    cache = StageCache(tmp_path / "cache")
    keep = run_data(load_recipe(_recipe(tmp_path, "keep", sampling={"max_tokens": 100})), cache, echo=_quiet)
    kept = _responses(cache, keep)
    truncated = [x for x in kept if x["finish_reason"] == "length"]
    assert 0 < len(truncated) < len(kept) and all(x["selected"] for x in truncated)

    drop = run_data(load_recipe(_recipe(tmp_path, "drop", sampling={"max_tokens": 100}, on_truncated="drop")),
                    cache, echo=_quiet)
    dropped = _responses(cache, drop)
    assert [x["finish_reason"] for x in dropped] == [x["finish_reason"] for x in kept]
    assert all(not x["selected"] for x in dropped if x["finish_reason"] == "length")
    # verify (keep: all) narrows the selection, never re-selects a dropped sample
    n_conv = {s.stage.id: s for s in drop.stages}["format"].stats["rows_out"]
    assert n_conv == sum(x["finish_reason"] == "stop" for x in dropped)

    retry = run_data(load_recipe(_recipe(tmp_path, "retry", sampling={"max_tokens": 100}, on_truncated="retry",
                                         retry_max_tokens=400)), cache, echo=_quiet)
    again = _responses(cache, retry)
    # what the budget cut is answered in full; the noisy teacher's own simulated
    # cut-offs (shorter than the budget) stay truncated
    budget_cut = [x for x in kept if x["finish_reason"] == "length" and x["completion_tokens"] == 100]
    still = [x for x in again if x["finish_reason"] == "length"]
    assert budget_cut and all(x["completion_tokens"] < 100 for x in still) and len(still) < len(truncated)
    extra = {s.stage.id: s for s in retry.stages}["distill"].stats["extra"]
    assert extra["truncated/retry_requests"] == len(truncated)
    # the first pass came from the request cache (same requests as `keep`): only the retries were sent
    assert extra["requests_new"] == len(truncated) and extra["attempts"] == len(truncated)


def test_accounting_with_prices(tmp_path):
    cache = StageCache(tmp_path / "cache")
    price = {"prompt_per_mtok": 1.0, "completion_per_mtok": 4.0}
    result = run_data(load_recipe(_recipe(tmp_path, price=price)), cache, echo=_quiet)
    extra = {s.stage.id: s for s in result.stages}["distill"].stats["extra"]
    responses = _responses(cache, result)
    assert extra["prompt_tokens"] == sum(x["prompt_tokens"] for x in responses)
    assert extra["completion_tokens"] == sum(x["completion_tokens"] for x in responses) > 0
    assert extra["cost"] == pytest.approx((extra["prompt_tokens"] + 4 * extra["completion_tokens"]) / 1e6)
    assert extra["new_cost"] == extra["cost"] and extra["requests"] == len(responses)
    line = teacher_summary(extra)
    assert f"{len(responses)} requests (0 cached, {len(responses)} new" in line and "0 failed" in line
    # a second recipe asking the same questions pays nothing
    other = run_data(load_recipe(_recipe(tmp_path, "other", price=price, max_failed_fraction=0.5)), cache, echo=_quiet)
    extra2 = {s.stage.id: s for s in other.stages}["distill"].stats["extra"]
    assert extra2["requests_cached"] == extra["requests"] and extra2["new_cost"] == 0 and extra2["cost"] == extra["cost"]


def test_vllm_without_the_gpu_extra_fails_at_start_naming_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    recipe = load_recipe(_recipe(tmp_path, engine="vllm", model="Qwen/Qwen2.5-0.5B-Instruct"))  # validates on CPU
    cache = StageCache(tmp_path / "cache")
    with pytest.raises(PipelineError, match=r"stage 'distill' \(distill\): the vllm engine needs vllm.*commonthoughts\[gpu\]"):
        run_data(recipe, cache, echo=_quiet)
    assert not (cache.root / "stages").exists()  # failed before the first stage ran


def test_gpu_groups_for_data_and_tensor_parallel():
    from data_pipeline.engines.vllm_engine import gpu_group

    gpus = [str(i) for i in range(8)]
    assert [gpu_group(s, 2, 4, gpus) for s in range(5)] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"], ["0", "1"]]
    assert gpu_group(0, 1, 1, ["3"]) == ["3"]
    with pytest.raises(ValueError, match="needs 8 GPUs, 4 visible"):
        gpu_group(0, 4, 2, gpus[:4])


def test_two_teacher_replicas_make_the_same_data(tmp_path):
    """runtime.data_parallel_size is not hashed because it changes no data:
    the stage made by two replicas is byte-identical to one replica's."""
    from data_pipeline.engines.local_server import build_tiny_chat_model

    model = str(build_tiny_chat_model(tmp_path / "tiny"))
    outputs = []
    for dp in (1, 2):
        path = _recipe(tmp_path, f"dp{dp}", engine="transformers", model=model, max_failed_fraction=0.0,
                       sampling={"temperature": 0.7, "max_tokens": 8},
                       runtime={"data_parallel_size": dp, "threads": 1, "batch_size": 8})
        cache = StageCache(tmp_path / f"cache{dp}")
        result = run_data(load_recipe(path), cache, echo=_quiet)
        fp = {s.stage.id: s.stage.fingerprint for s in result.stages}["distill"]
        outputs.append((fp, sorted((p.name, p.read_bytes()) for p in (cache.root / "stages" / fp / "data").iterdir())))
    assert outputs[0] == outputs[1]
