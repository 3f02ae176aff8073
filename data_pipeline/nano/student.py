"""The nano track's student: a byte-level tokenizer and a tiny Qwen2 built from a config.

Nothing is downloaded. `build_tokenizer()` makes a tokenizer in which every byte is a
token (ids 0-255 are the byte values, no merges, so any text round-trips), plus the
ChatML special tokens. Its chat template wraps assistant turns in
`{% generation %}...{% endgeneration %}` with `<|im_end|>` inside, so TRL's
`assistant_only_loss=True` trains the model on its answers and on stopping.
`build_student()` saves a deterministically initialised Qwen2 with that tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (IM_START, IM_END, ENDOFTEXT, PAD)

# ChatML. The assistant's content and its `<|im_end|>` are inside the generation block
# (so the mask covers the stop token); the newline after it is not.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message['role'] in ['system', 'user'] %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- raise_exception('Unsupported role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}

# Named student initialisations; recipes refer to them by key (`sft.model.init`).
STUDENTS: dict[str, dict[str, Any]] = {
    "nano-2m": {
        "num_hidden_layers": 4,
        "hidden_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    },
    # GPU-scale student for throughput runs (bench/sft_gpu.py): 514M parameters, Qwen2 layout
    # (GQA, SwiGLU), the same byte-level tokenizer, so it trains on any nano dataset.
    "byte-500m": {
        "num_hidden_layers": 28,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "intermediate_size": 5120,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    },
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the one `ByteLevel` uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: token id == byte value for ids 0-255, then the special tokens."""
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=STUDENTS["nano-2m"]["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer, keeping a generic `tokenizer.json` exactly as written.

    transformers 5 maps `model_type: qwen2` to `Qwen2Tokenizer`, which rebuilds the backend
    with an NFC normalizer and Qwen's split regex whatever `tokenizer.json` says; for the
    byte-level student that breaks the round-trip of non-NFC text. A directory whose
    `tokenizer_config.json` declares the generic class (`TokenizersBackend` /
    `PreTrainedTokenizerFast`) is therefore loaded verbatim; anything else goes through
    `AutoTokenizer`.
    """
    config_file = Path(path) / "tokenizer_config.json"
    declared = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if declared in _GENERIC_TOKENIZER_CLASSES and (Path(path) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def student_config(name: str, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    """The `Qwen2Config` of a named student, with vocabulary and special ids from `tokenizer`."""
    if name not in STUDENTS:
        raise KeyError(f"unknown student init {name!r}; known: {sorted(STUDENTS)}")
    return Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **STUDENTS[name],
    )


def build_student(out_dir: str | Path, name: str = "nano-2m", seed: int = 0) -> Path:
    """Save a freshly initialised student `name` (weights from `seed`) with its tokenizer to `out_dir`.

    Building twice with the same arguments gives identical weights; the global torch RNG
    of the caller is left untouched.
    """
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = student_config(name, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
