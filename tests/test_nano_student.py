"""The nano student: byte-level tokenizer, ChatML template with generation markers, tiny Qwen2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

from data_pipeline.nano.student import (
    IM_END,
    PAD,
    SPECIAL_TOKENS,
    STUDENTS,
    build_student,
    build_tokenizer,
    load_tokenizer,
)

TEXTS = [
    "",
    "Compute 123 + 456.",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "héllo wörld, 中文, русский, العربية, 🤖🧮",
    "e\u0301 (decomposed, not NFC) ﬁ Ａ",
    "\x00\x01\x7f control bytes",
    "'s 're don't x**2 = 4; \\frac{1}{2}",
]

CHAT = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "Compute 12 + 34."},
    {"role": "assistant", "content": "2+4=6\n1+3=4\nAnswer: 46"},
    {"role": "user", "content": "And 1 + 1?"},
    {"role": "assistant", "content": "Answer: 2"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return build_student(tmp_path_factory.mktemp("student") / "nano-2m")


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_every_byte_is_a_token(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_special_tokens(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert sorted(ids) == list(range(256, 256 + len(SPECIAL_TOKENS)))
    assert len(tokenizer) == 256 + len(SPECIAL_TOKENS)
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.bos_token is None
    # No BOS/EOS added implicitly: the chat template decides what the model sees.
    assert tokenizer("ab")["input_ids"] == [97, 98]


def test_chat_template_renders(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou add numbers.<|im_end|>\n"
        "<|im_start|>user\nCompute 12 + 34.<|im_end|>\n"
        "<|im_start|>assistant\n2+4=6\n1+3=4\nAnswer: 46<|im_end|>\n"
        "<|im_start|>user\nAnd 1 + 1?<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: 2<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nCompute 12 + 34.<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith(prompt)  # prefix-preserving
    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_mask_is_content_plus_im_end(tokenizer):
    out = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans: list[list[int]] = []
    for i, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit:
            if i == 0 or not mask[i - 1]:
                spans.append([])
            spans[-1].append(token)
    expected = [m["content"] for m in CHAT if m["role"] == "assistant"]
    assert [tokenizer.decode(span) for span in spans] == [c + IM_END for c in expected]
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_build_is_deterministic(tmp_path, student_dir):
    state = torch.random.get_rng_state()
    again = build_student(tmp_path / "again")
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (again / name).read_bytes() == (student_dir / name).read_bytes(), name
    other = build_student(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (student_dir / "model.safetensors").read_bytes()


def test_eos_and_pad_agree(student_dir):
    tokenizer = load_tokenizer(student_dir)
    config = json.loads((student_dir / "config.json").read_text())
    generation = GenerationConfig.from_pretrained(student_dir)
    assert tokenizer.eos_token == IM_END
    assert config["eos_token_id"] == generation.eos_token_id == tokenizer.eos_token_id
    assert config["pad_token_id"] == generation.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert IM_END in tokenizer.chat_template
    assert config["vocab_size"] == len(tokenizer)
    for key, value in STUDENTS["nano-2m"].items():
        assert config[key] == value, key


def test_saved_student_loads_and_generates(student_dir):
    tokenizer = load_tokenizer(student_dir)
    for text in TEXTS:  # tokenizer.json is loaded verbatim: still every byte a token
        assert tokenizer.decode(tokenizer.encode(text)) == text
    # AutoTokenizer maps qwen2 to Qwen2Tokenizer (adds NFC); it agrees on NFC text.
    auto = AutoTokenizer.from_pretrained(student_dir)
    assert auto.encode(CHAT[1]["content"]) == tokenizer.encode(CHAT[1]["content"])
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    assert 0.9e6 < model.num_parameters() < 1.2e6
    inputs = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 4
