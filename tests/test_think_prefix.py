"""Teachers whose chat template opens the thought (QwQ-32B: the generation
prompt ends with `<think>\\n`): the completion starts inside the thought and
holds only the closing tag. The in-process engines split it into `reasoning`
and `text` as a server's reasoning parser does for the endpoint engine, so
`format` puts both tags back."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import jinja2
import pytest

from curation.distill import DistillParams, distill
from curation.format import FormatParams, format_rows
from data_pipeline.engines import GenerationRequest, Sampling, get_engine
from data_pipeline.engines.base import Completion, split_completion, split_reasoning
from data_pipeline.engines.local_server import build_tiny_chat_model
from data_pipeline.engines.request_cache import RequestCache, cached_generate
from data_pipeline.engines.transformers_engine import TransformersEngine
from data_pipeline.nano.student import load_tokenizer
from data_pipeline.ops import OpContext

# QwQ-32B's template, cut to what matters here: ChatML, and a generation prompt
# that opens the thought.
QWQ_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
# Plain ChatML: the generation prompt opens nothing (local_server.CHATML).
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
COMPLETION = "step 1...\n</think>\n\nThe answer is \\boxed{4}."
ANSWER = "The answer is \\boxed{4}."


def _render(template: str, messages=MESSAGES) -> str:
    return jinja2.Environment().from_string(template).render(messages=messages, add_generation_prompt=True)


# -- the helper -----------------------------------------------------------

def test_a_prompt_that_opens_the_thought_splits_at_the_closing_tag():
    prompt = _render(QWQ_TEMPLATE)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert split_reasoning(prompt, COMPLETION) == ("step 1...", ANSWER)
    # Only the first closing tag splits; a later one is part of the answer.
    assert split_reasoning(prompt, "a</think>b</think>c") == ("a", "b</think>c")
    # A model that repeats the opening tag the template already wrote.
    assert split_reasoning(prompt, "<think>\n" + COMPLETION) == ("step 1...", ANSWER)
    # The opening tag with no newline after it, or other whitespace, opens it too.
    assert split_reasoning("...assistant\n<think>", COMPLETION) == ("step 1...", ANSWER)
    assert split_reasoning("...assistant\n<think> \n\n", COMPLETION) == ("step 1...", ANSWER)
    # An empty thought is no reasoning (as the endpoint engine reads an empty reasoning_content).
    assert split_reasoning(prompt, "\n</think>\n\n" + ANSWER) == (None, ANSWER)


def test_b_a_truncated_thought_is_all_reasoning_and_no_answer():
    prompt = _render(QWQ_TEMPLATE)
    assert split_reasoning(prompt, "step 1...\nstep 2, and then") == ("step 1...\nstep 2, and then", "")
    # The finish reason stays what it was.
    c = split_completion(Completion("step 1...\nstep 2", "length", 10, 7), prompt)
    assert (c.reasoning, c.text, c.finish_reason, c.completion_tokens) == ("step 1...\nstep 2", "", "length", 7)


def test_c_a_prompt_that_opens_nothing():
    prompt = _render(CHATML_TEMPLATE)
    # No think block: the text is untouched (whitespace included), no reasoning.
    assert split_reasoning(prompt, "  The answer is 4.\n") == (None, "  The answer is 4.\n")
    # A closing tag the prompt did not open and the completion did not open either: not a thought.
    assert split_reasoning(prompt, COMPLETION) == (None, COMPLETION)
    # The model opened the thought itself (DeepSeek-R1 with its older templates): the same split.
    assert split_reasoning(prompt, "<think>\n" + COMPLETION) == ("step 1...", ANSWER)
    assert split_reasoning(prompt, "\n<think>step 1...</think>" + ANSWER) == ("step 1...", ANSWER)
    # ... and never closed it.
    assert split_reasoning(prompt, "<think>\nstep 1...") == ("step 1...", "")
    # A think block later in the text is the answer's business.
    assert split_reasoning(prompt, "Sure. <think>x</think> y") == (None, "Sure. <think>x</think> y")


def test_other_tags_and_completions_left_alone():
    prompt = "<|im_start|>assistant\n<reason>\n"
    assert split_reasoning(prompt, "r\n</reason>\nA", tags=("<reason>", "</reason>")) == ("r", "A")
    assert split_reasoning(prompt, COMPLETION) == (None, COMPLETION)  # the default tags: not opened
    opened = _render(QWQ_TEMPLATE)
    # Failed completions, and completions whose reasoning is already apart (a server's parser), stay as they are.
    failed = split_completion(Completion("", "error", error="boom"), opened)
    assert (failed.text, failed.reasoning, failed.finish_reason) == ("", None, "error")
    parsed = split_completion(Completion("answer </think> quoted", "stop", reasoning="r"), opened)
    assert (parsed.reasoning, parsed.text) == ("r", "answer </think> quoted")


# -- the transformers engine, end to end -----------------------------------

def _model(root: Path, template: str) -> Path:
    """A tiny random Qwen2 (byte-level tokenizer) whose chat template is `template`."""
    folder = build_tiny_chat_model(root)
    tok = load_tokenizer(folder)
    tok.chat_template = template
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwq_model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("tiny-qwq"), QWQ_TEMPLATE)


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("tiny-chatml"), CHATML_TEMPLATE)


@pytest.fixture
def scripted(monkeypatch):
    """The model runs (prefill, KV cache, decode loop) but the token it emits at
    each step comes from a script, the same for every row: a random tiny model
    writes gibberish, and what is tested is what the engine does with a known
    completion. Returns a setter for the script's text."""
    state: dict[str, list[int]] = {}

    def set_script(tokenizer, text: str) -> list[int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text  # byte-level: the script round-trips
        state["ids"], state["step"] = ids + [tokenizer.eos_token_id], 0
        return ids

    def next_tokens(logits, generators, sampling):
        tok = state["ids"][state["step"]]
        state["step"] += 1
        return [tok] * logits.shape[0]

    monkeypatch.setattr(TransformersEngine, "_next_tokens", staticmethod(next_tokens))
    return set_script


def _engine(folder: Path) -> TransformersEngine:
    return get_engine("transformers", str(folder), threads=1, batch_size=4)


def _requests(n: int = 2) -> list[GenerationRequest]:
    return [GenerationRequest.from_messages(MESSAGES, sample_index=i, seed=i) for i in range(n)]


def test_d_transformers_engine_splits_a_thought_its_template_opened(qwq_model, scripted):
    eng = _engine(qwq_model)
    assert eng.prompt_text(_requests()[0]).endswith("<|im_start|>assistant\n<think>\n")
    ids = scripted(eng.tokenizer, COMPLETION)
    out = eng.generate(_requests(), Sampling(max_tokens=200))
    for c in out:
        assert (c.reasoning, c.text, c.finish_reason) == ("step 1...", ANSWER, "stop")
        assert c.completion_tokens == len(ids) + 1  # the raw completion and its end token: the split counts nothing
    # Truncated inside the thought: all reasoning, no answer, still "length".
    scripted(eng.tokenizer, COMPLETION)
    cut = eng.generate(_requests(1), Sampling(max_tokens=7))[0]
    assert (cut.reasoning, cut.text, cut.finish_reason, cut.completion_tokens) == ("step 1.", "", "length", 7)
    assert eng.identity()["think_tags"] == ["<think>", "</think>"]


def test_d_transformers_engine_template_that_opens_nothing(chatml_model, scripted):
    eng = _engine(chatml_model)
    plain = "The answer is \\boxed{4}.\n"
    scripted(eng.tokenizer, plain)
    c = eng.generate(_requests(1), Sampling(max_tokens=200))[0]
    assert (c.reasoning, c.text) == (None, plain)
    scripted(eng.tokenizer, "<think>\n" + COMPLETION)
    c = eng.generate(_requests(1), Sampling(max_tokens=200))[0]
    assert (c.reasoning, c.text) == ("step 1...", ANSWER)


def test_d_split_answers_are_what_the_request_cache_serves(qwq_model, scripted, tmp_path):
    eng = _engine(qwq_model)
    scripted(eng.tokenizer, COMPLETION)
    cache = RequestCache(tmp_path / "requests.sqlite")
    first = cached_generate(eng, cache, _requests(), Sampling(max_tokens=200))
    again = cached_generate(eng, cache, _requests(), Sampling(max_tokens=200))  # script spent: the cache answers
    cache.close()
    assert cache.hits == 2 and cache.misses == 2
    assert [c.to_dict() for c in again] == [c.to_dict() for c in first]
    assert all((c.reasoning, c.text) == ("step 1...", ANSWER) for c in again)


# -- format puts both tags back ---------------------------------------------

def test_e_distill_then_format_inline_has_both_tags(qwq_model, scripted, tmp_path):
    # The engine's tokenizer, to write the script with.
    scripted(load_tokenizer(qwq_model), COMPLETION)
    ctx = OpContext(stage_id="distill", stage_dir=tmp_path, cache_root=tmp_path)
    params = DistillParams(engine="transformers", model=str(qwq_model), samples=1,
                           sampling={"temperature": 0.0, "max_tokens": 200},
                           runtime={"threads": 1, "batch_size": 4})
    rows = [{"id": "q1", "problem": "What is 2 + 2?", "answer": "4"}]
    result = distill(rows, params, ctx)
    (sample,) = result.kept[0]["responses"]
    assert (sample["reasoning"], sample["text"], sample["finish_reason"]) == ("step 1...", ANSWER, "stop")

    kept = [dict(result.kept[0], responses=[dict(sample, selected=True)])]
    inline = format_rows(kept, FormatParams(), ctx).kept[0]["messages"][-1]["content"]
    assert inline == "<think>\nstep 1...\n</think>\n" + ANSWER
    assert inline.count("<think>") == 1 and inline.count("</think>") == 1
    dropped = format_rows(kept, FormatParams(reasoning="drop"), ctx).kept[0]["messages"][-1]["content"]
    assert dropped == ANSWER


# -- the vLLM engine: the same calls, on a stand-in for vllm -----------------

class _FakeLLM:
    """`vllm.LLM` reduced to what the engine calls; `chat` answers every
    conversation with the raw text QwQ would write after `<think>\\n`."""

    def __init__(self, tokenizer, text: str, **kwargs):
        self.tokenizer, self.text = tokenizer, text
        dtype = types.SimpleNamespace(dtype="torch.bfloat16")
        self.llm_engine = types.SimpleNamespace(model_config=dtype)

    def get_tokenizer(self):
        return self.tokenizer

    def chat(self, conversations, sampling_params, use_tqdm, chat_template_kwargs):
        out = types.SimpleNamespace(text=self.text, finish_reason="stop", token_ids=[0] * 9)
        return [types.SimpleNamespace(prompt_token_ids=[0] * 5, outputs=[out]) for _ in conversations]


def test_vllm_engine_splits_the_same_way(qwq_model, monkeypatch):
    tokenizer = load_tokenizer(qwq_model)
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM = lambda model, **kwargs: _FakeLLM(tokenizer, COMPLETION, **kwargs)
    fake.SamplingParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)
    from data_pipeline.engines.vllm_engine import VLLMEngine

    eng = VLLMEngine(str(qwq_model))
    assert eng.prompt_text(_requests()[0]).endswith("<think>\n")
    seen = []
    out = eng.generate(_requests(3), Sampling(max_tokens=200), on_result=lambda i, c: seen.append(i))
    assert seen == [0, 1, 2]
    assert all((c.reasoning, c.text, c.finish_reason) == ("step 1...", ANSWER, "stop") for c in out)
    assert eng.identity()["think_tags"] == ["<think>", "</think>"]


def test_distill_warns_when_answers_close_a_thought_they_never_open(chatml_model, scripted, tmp_path, capsys):
    """A teacher whose template opens the thought, served without a reasoning parser, returns
    text with a closing tag only: distill counts it and says how to fix the server."""
    scripted(load_tokenizer(chatml_model), COMPLETION)  # ChatML opens nothing: the text stays as is
    ctx = OpContext(stage_id="distill", stage_dir=tmp_path, cache_root=tmp_path)
    params = DistillParams(engine="transformers", model=str(chatml_model), samples=2,
                           sampling={"temperature": 0.0, "max_tokens": 200},
                           runtime={"threads": 1, "batch_size": 4})
    result = distill([{"id": "q1", "problem": "What is 2 + 2?", "answer": "4"}], params, ctx)
    assert result.stats["warnings/unopened_think"] == 2
    assert "--reasoning-parser" in capsys.readouterr().err
