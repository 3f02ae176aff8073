"""The in-process transformers engine on a tiny random Qwen2 built locally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_pipeline.engines import GenerationRequest, Sampling, get_engine

from data_pipeline.engines.local_server import build_tiny_chat_model as build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


def with_extra_eos(model_dir: Path, out_dir: Path, extra: list[int]) -> Path:
    """A copy of `model_dir` whose generation_config also stops at `extra` ids."""
    copy = shutil.copytree(model_dir, out_dir)
    path = copy / "generation_config.json"
    gen = json.loads(path.read_text())
    gen["eos_token_id"] = [gen["eos_token_id"], *extra]
    path.write_text(json.dumps(gen))
    return copy


def engine(model_dir: Path, **options):
    # threads=1: tiny models on a shared 2-core machine (see the engine's docstring).
    return get_engine("transformers", str(model_dir), threads=1, **options)


PROMPTS = [
    "What is 2 + 2?",
    "Compute 17 * 3.",
    "Hi",
    "A much longer question about the sum of the first one hundred positive integers?",
    "x",
    "Solve for y: 3y + 1 = 10.",
    "What is the remainder when 1000 is divided by 7?",
    "é ü ß — unicode",
    "Last one.",
]


def _requests(seed0: int = 0) -> list[GenerationRequest]:
    return [
        GenerationRequest.from_messages([{"role": "user", "content": p}], sample_index=0, seed=seed0 + i)
        for i, p in enumerate(PROMPTS)
    ]


def test_registered_and_loads(tiny_model):
    eng = engine(tiny_model, batch_size=4)
    assert eng.name == "transformers" and eng.batch_size == 4
    ident = eng.identity()
    assert ident["engine"] == "transformers" and ident["device"] == eng.device.type
    assert ident["dtype"] == "float32"  # the checkpoint's dtype on GPU, float32 on CPU
    assert len(ident["model_sha256"]) == 64 and ident["model_sha256"] == engine(tiny_model).identity()["model_sha256"]
    assert eng.tokenizer.eos_token_id in eng.eos_ids


def test_sampling_independent_of_batch_size(tiny_model):
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=24)
    one = engine(tiny_model, batch_size=1).generate(_requests(), sampling)
    seven = engine(tiny_model, batch_size=7).generate(_requests(), sampling)
    assert [c.text for c in one] == [c.text for c in seven]
    assert [c.completion_tokens for c in one] == [c.completion_tokens for c in seven]
    # Different requests in one batch do not get identical samples, and a seed changes the sample.
    assert len({c.text for c in seven}) > 1
    reseeded = engine(tiny_model, batch_size=7).generate(_requests(seed0=100), sampling)
    assert [c.text for c in reseeded] != [c.text for c in seven]
    for c in seven:
        assert c.finish_reason in {"stop", "length"}
        assert c.prompt_tokens > 0 and 0 < c.completion_tokens <= 24
        assert c.engine == "transformers"


def test_sampling_with_early_stops_independent_of_batch_size(tiny_model, tmp_path):
    """Rows that stop early leave the batch (and its KV cache) without changing the others."""
    stopper = with_extra_eos(tiny_model, tmp_path / "m", list(range(0, 256, 25)))
    sampling = Sampling(temperature=1.0, max_tokens=20)
    one = engine(stopper, batch_size=1).generate(_requests(), sampling)
    seven = engine(stopper, batch_size=7).generate(_requests(), sampling)
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in one] == [
        (c.text, c.finish_reason, c.completion_tokens) for c in seven
    ]
    assert {c.finish_reason for c in seven} == {"stop", "length"}
    assert len({c.completion_tokens for c in seven}) > 2


def _greedy_reference(model_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        out = model.generate(
            ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
    torch.set_num_threads(threads)
    return out[0, ids.shape[1] :].tolist()


def test_greedy_matches_model_generate(tiny_model):
    sampling = Sampling(temperature=0.0, max_tokens=16)
    eng = engine(tiny_model, batch_size=7)  # left-padded batches
    got = eng.generate(_requests(), sampling)
    for prompt, completion in zip(PROMPTS, got):
        new = _greedy_reference(tiny_model, prompt, 16)
        stopped = new[-1] in eng.eos_ids
        assert completion.completion_tokens == len(new)
        assert completion.finish_reason == ("stop" if stopped else "length")
        assert completion.text == eng.tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)


def test_stops_at_generation_config_eos(tiny_model, tmp_path):
    """An id listed in generation_config.eos_token_id ends the sample with "stop"."""
    sampling = Sampling(temperature=0.0, max_tokens=12)
    ids = _greedy_reference(tiny_model, PROMPTS[0], 12)
    plain = engine(tiny_model)
    assert len(ids) == 12 and ids[-1] not in plain.eos_ids, "fixture: greedy should run to max_tokens"
    assert plain.generate(_requests()[:1], sampling)[0].finish_reason == "length"
    # The first position >= 1 whose token has not appeared before: stopping there is exact.
    stop_at = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])

    stopper = with_extra_eos(tiny_model, tmp_path / "m", [ids[stop_at]])
    stopper_engine = engine(stopper)
    # The identity (request-cache key) follows the folder's content, not its name.
    assert stopper_engine.identity()["model_sha256"] != plain.identity()["model_sha256"]
    stopped = stopper_engine.generate(_requests()[:1], sampling)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == stop_at + 1  # the stop token is counted, not shown
    assert stopped.text == plain.tokenizer.decode(ids[:stop_at], skip_special_tokens=True)


def test_failures_are_reported_not_raised(tiny_model):
    eng = engine(tiny_model)
    requests = _requests()[:3]

    def broken_forward(*args, **kwargs):
        raise RuntimeError("out of memory")

    eng.hf_model.forward = broken_forward
    out = eng.generate(requests, Sampling(max_tokens=2))
    assert [c.finish_reason for c in out] == ["error"] * 3
    assert all("out of memory" in c.error for c in out)


def test_data_parallel_replicas_give_the_same_answers(tiny_model):
    """Two replicas in spawned processes: every request answered once, handed
    over as its chunk returns, and the same samples as one engine (each sample
    is seeded by its request, not by where it ran)."""
    sampling = Sampling(temperature=0.8, max_tokens=12)
    requests = _requests() * 3  # 27 requests, chunks of 4: replicas take turns
    single = engine(tiny_model, batch_size=4).generate(requests, sampling)
    replicated = get_engine("transformers", str(tiny_model), threads=1, batch_size=4, data_parallel_size=2)
    try:
        assert type(replicated).__name__ == "ReplicatedEngine" and replicated.chunk_size == 64
        replicated.chunk_size = 4
        seen: list[int] = []
        out = replicated.generate(requests, sampling, on_result=lambda i, c: seen.append(i))
        assert replicated.identity() == engine(tiny_model).identity()
        assert sorted(seen) == list(range(len(requests)))
        assert [c.text for c in out] == [c.text for c in single]
        assert replicated.counters["attempts"] == len(requests)
    finally:
        replicated.close()
    assert not any(p.is_alive() for p in replicated._procs)


def test_a_replica_that_cannot_start_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match=r"replica \d failed to start"):
        get_engine("transformers", str(tmp_path / "no-such-model"), data_parallel_size=2)
