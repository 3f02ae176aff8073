"""Supervised fine-tuning of a recipe's student with TRL's `SFTTrainer`.

`run_sft` turns a recipe's `sft.args` into a `trl.SFTConfig`, checks the things that make
an SFT run silently useless before the first step (no assistant mask, an EOS the model is
never taught, pad == eos, rows truncated away), trains with loss on assistant tokens only,
resumes from the last checkpoint, and writes the model with a card that carries the
recipe's fingerprint.

Recipe keys beyond `SFTConfig`: `global_batch_size` (sequences per optimizer step, from
which `gradient_accumulation_steps` is derived) and `max_truncated_share` (the largest
share of rows allowed to exceed `max_length`, default 0.05).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
import yaml
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import (
    AutoConfig,
    GenerationConfig,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerState,
    set_seed,
)
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from data_pipeline.errors import PipelineError
from data_pipeline.nano.student import load_tokenizer

logger = logging.getLogger(__name__)

# Our keys in `sft.args`, next to the `SFTConfig` fields.
OWN_KEYS: dict[str, str] = {
    "global_batch_size": "sequences per optimizer step; gradient_accumulation_steps is derived from it",
    "max_truncated_share": "largest allowed share of rows longer than max_length (default 0.05)",
}
DEFAULT_MAX_TRUNCATED_SHARE = 0.05
# Set by the runner, not by a recipe.
RESERVED_KEYS: dict[str, str] = {
    "output_dir": "the runner sets it (checkpoints go to <output>/checkpoints)",
    "report_to": "the runner sets it to 'none'",
}
# Fields renamed or removed in TRL/transformers, with what to write instead.
RENAMED: dict[str, str] = {
    "max_seq_length": "max_length",
    "group_by_length": "train_sampling_strategy: group_by_length",
    "evaluation_strategy": "eval_strategy",
    "overwrite_output_dir": "nothing (the runner resumes from <output>/checkpoints)",
}
# Hyperparameters shown on the model card besides the ones the recipe sets.
CARD_FIELDS: tuple[str, ...] = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "packing", "packing_strategy", "padding_free", "assistant_only_loss",
    "train_sampling_strategy", "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "bf16", "fp16",
    "activation_checkpointing", "seed", "data_seed", "save_steps", "logging_steps",
)  # fmt: skip
# Attention implementations that skip the masked-out blocks of packed, padding-free batches.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention", "kernels-community/flash-attn",
                    "kernels-community/flash-attn3", "kernels-community/vllm-flash-attn3")
# Rows whose assistant mask is checked before training.
MASK_SAMPLE_ROWS = 32
REQUIRED_CARD_KEYS: tuple[str, ...] = ("recipe_name", "recipe_version", "fingerprint", "dataset_repo")


class SFTConfigError(PipelineError, ValueError):
    """A recipe's SFT section or its inputs would make training fail or learn the wrong thing."""


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(SFTConfig) if f.init}


def check_sft_args(args: dict[str, Any]) -> list[str]:
    """Problems with a recipe's `sft.args`, one message per key (empty when it is fine).

    Keys must be fields of the installed `trl.SFTConfig` or one of `OWN_KEYS`; unknown keys
    get the closest field name as a suggestion.
    """
    fields = _config_fields()
    known = sorted(fields | set(OWN_KEYS))
    problems: list[str] = []
    for key in args:
        if key in RESERVED_KEYS:
            problems.append(f"sft.args.{key}: not settable in a recipe: {RESERVED_KEYS[key]}")
        elif key not in fields and key not in OWN_KEYS:
            hint = RENAMED.get(key) or next(iter(difflib.get_close_matches(key, known, n=1, cutoff=0.6)), None)
            where = f"trl.SFTConfig (trl {trl.__version__}) or one of {sorted(OWN_KEYS)}"
            problems.append(
                f"sft.args.{key}: unknown key, not a field of {where}" + (f"; did you mean `{hint}`?" if hint else "")
            )
    gbs = args.get("global_batch_size")
    if gbs is not None and (isinstance(gbs, bool) or not isinstance(gbs, int) or gbs < 1):
        problems.append(f"sft.args.global_batch_size: must be a positive integer, got {gbs!r}")
    share = args.get("max_truncated_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1):
        problems.append(f"sft.args.max_truncated_share: must be a number in [0, 1], got {share!r}")
    return problems


def gradient_accumulation_steps(args: dict[str, Any], world_size: int) -> int:
    """`global_batch_size / (per_device_train_batch_size * world_size)`, or the recipe's own value."""
    per_device = int(args.get("per_device_train_batch_size", SFTConfig.per_device_train_batch_size))
    explicit = args.get("gradient_accumulation_steps")
    gbs = args.get("global_batch_size")
    if gbs is None:
        return int(explicit or 1)
    per_step = per_device * world_size
    if gbs % per_step:
        raise SFTConfigError(
            f"sft.args.global_batch_size={gbs} is not divisible by per_device_train_batch_size ({per_device}) "
            f"x world size ({world_size}) = {per_step}"
        )
    steps = gbs // per_step
    if explicit is not None and explicit != steps:
        raise SFTConfigError(
            f"sft.args.gradient_accumulation_steps={explicit} disagrees with global_batch_size={gbs} "
            f"(per_device_train_batch_size {per_device} x world size {world_size} gives {steps}); set only one"
        )
    return steps


def _on_cpu(args: dict[str, Any]) -> bool:
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return bool(args.get("use_cpu")) or not accelerated


def build_sft_config(args: dict[str, Any], checkpoint_dir: Path, world_size: int = 1) -> SFTConfig:
    """The `SFTConfig` for a recipe's `sft.args`, with the runner's settings and CPU defaults.

    Always: assistant-only loss (unless the recipe says otherwise), no experiment trackers,
    non-padding token counting, at most two checkpoints kept. On CPU, unless the recipe sets
    them: no activation checkpointing, fp32 (TRL's bf16 default fails on CPU without `use_cpu`).

    Sampling stays TRL's default (random order). `train_sampling_strategy: group_by_length`
    is 1.5x faster on CPU but makes every batch a block of similar rows; on the nano track,
    where length follows the task family and level, a student trained 800 steps that way
    could not even copy the operands from the prompt (nano-bench pass@1 0.015), while
    400 steps in random order on the same data copied them correctly.
    """
    problems = check_sft_args(args)
    if problems:
        raise SFTConfigError("invalid sft.args:\n  " + "\n  ".join(problems))
    kwargs = {k: v for k, v in args.items() if k not in OWN_KEYS}
    kwargs["gradient_accumulation_steps"] = gradient_accumulation_steps(args, world_size)
    kwargs.setdefault("assistant_only_loss", True)
    kwargs.setdefault("include_num_input_tokens_seen", "non_padding")
    kwargs.setdefault("save_total_limit", 2)
    if world_size > 1:  # every parameter of a causal LM gets a gradient: skip DDP's extra graph traversal
        kwargs.setdefault("ddp_find_unused_parameters", False)
    on_cpu = _on_cpu(args)
    padding_free = kwargs.get("padding_free") or (kwargs.get("packing") and kwargs.get("packing_strategy", "bfd")
                                                   in ("bfd", "bfd_split"))
    attn = (kwargs.get("model_init_kwargs") or {}).get("attn_implementation")
    if padding_free and not on_cpu and attn not in VARLEN_ATTENTION:
        logger.warning(
            "padding-free batches with attn_implementation=%r: the packed rows become one sequence with a dense "
            "block-diagonal mask, so attention costs (batch tokens)^2; on an H200 this ran at 0.56x the tokens/s "
            "of padded batches, and at 1.45x with model_init_kwargs.attn_implementation: flex_attention "
            "(bench/results/sft_gpu.json)", attn or "sdpa",
        )
    if "gradient_checkpointing" not in kwargs:  # deprecated alias in transformers 5; TRL defaults it to True
        kwargs.setdefault("activation_checkpointing", not on_cpu)
    if on_cpu:
        if kwargs.get("packing"):
            logger.warning(
                "packing on CPU flattens each batch into one long sequence: measured 0.15-0.4x the tokens/s of "
                "padded batches"
            )
        if not kwargs.get("fp16"):
            kwargs.setdefault("bf16", False)
        kwargs.setdefault("dataloader_pin_memory", False)
    return SFTConfig(output_dir=str(checkpoint_dir), report_to="none", **kwargs)


def load_train_dataset(train_files: list[str]) -> datasets.Dataset:
    """The `messages` column of the given parquet files, as one dataset."""
    if not train_files:
        raise SFTConfigError("no train files")
    dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in train_files], split="train")
    if "messages" not in dataset.column_names:
        raise SFTConfigError(f"train files have no `messages` column (columns: {dataset.column_names})")
    if len(dataset) == 0:
        raise SFTConfigError("train files have no rows")
    return dataset.select_columns(["messages"])


def _eos_ids(generation_config: GenerationConfig) -> set[int]:
    eos = generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _training_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The template TRL will train with: the tokenizer's, or TRL's patched copy of a known one."""
    template = tokenizer.chat_template
    if template is None:
        raise SFTConfigError("the tokenizer has no chat template")
    if isinstance(template, dict):
        template = template["default"]
    if has_generation_markers(template):
        return template
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        patched = None
    if patched is None or not has_generation_markers(patched):
        raise SFTConfigError(
            "the chat template has no {% generation %}...{% endgeneration %} markers, so with "
            "assistant_only_loss=True the assistant mask would be all zeros (TRL #4201, #4879); "
            "wrap assistant content and its end-of-turn token in the markers"
        )
    return patched


def _check_special_tokens(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig, template: str, eos_set_by_recipe: bool
) -> None:
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    if eos is None:
        raise SFTConfigError("the tokenizer has no eos_token")
    if pad is None or pad == eos:
        raise SFTConfigError(
            f"pad token == eos token ({eos!r}): padding is masked out of the loss, so the model never learns "
            "to emit EOS and never stops (TRL #2059, #3091); give the tokenizer a distinct pad token"
        )
    if not eos_set_by_recipe and tokenizer.eos_token_id not in _eos_ids(generation_config):
        raise SFTConfigError(
            f"EOS disagreement: tokenizer.eos_token is {eos!r} (id {tokenizer.eos_token_id}) but the base model's "
            f"generation_config.eos_token_id is {generation_config.eos_token_id}: generation would not stop where "
            "training taught it to"
        )
    answer = "The answer is 2."
    probe = [{"role": "user", "content": "1 + 1 = ?"}, {"role": "assistant", "content": answer}]
    if has_generation_markers(template):  # what the loss sees: the last token of the assistant mask
        out = tokenizer.apply_chat_template(
            probe, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        masked = [t for t, bit in zip(out["input_ids"], out["assistant_masks"], strict=True) if bit]
        last = next((t for t in reversed(masked) if tokenizer.decode([t]).strip()), None)
        if last is None:
            raise SFTConfigError("the chat template's generation markers mark no token of an assistant turn")
        ender = tokenizer.decode([last])
    else:  # what follows the assistant's content in the rendered text
        text = tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
        tail = text[text.rindex(answer) + len(answer) :].lstrip()
        ender = eos if tail.startswith(eos) else tail[:16]
    if ender != eos:
        raise SFTConfigError(
            f"EOS disagreement: the chat template ends an assistant turn's trained span with {ender!r}, but "
            f"tokenizer.eos_token is {eos!r}; put the end-of-turn token inside "
            "{% generation %}...{% endgeneration %} and make it the eos_token"
        )


def _check_assistant_masks(
    tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset, template: str, seed: int
) -> None:
    rows = random.Random(seed).sample(range(len(dataset)), min(MASK_SAMPLE_ROWS, len(dataset)))
    for i in sorted(rows):
        messages = dataset[i]["messages"]
        if not any(m["role"] == "assistant" for m in messages):
            raise SFTConfigError(f"train row {i} has no assistant message")
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        if not any(out["assistant_masks"]):
            raise SFTConfigError(
                f"the assistant mask of train row {i} is empty: the chat template's generation markers do not "
                "cover its assistant turns, so it would train on nothing (TRL #4201, #5471)"
            )


def truncated_share(
    tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset, template: str | None, max_length: int
) -> tuple[float, int, int]:
    """(share of rows longer than `max_length` tokens, number of such rows, longest row)."""

    def lengths(batch: dict[str, list]) -> dict[str, list[int]]:
        texts = tokenizer.apply_chat_template(batch["messages"], chat_template=template, tokenize=False)
        return {"n_tokens": [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}

    n_tokens = dataset.map(lengths, batched=True, remove_columns=dataset.column_names, desc="Measuring lengths")[
        "n_tokens"
    ]
    n_long = sum(n > max_length for n in n_tokens)
    return n_long / len(n_tokens), n_long, max(n_tokens)


def preflight(
    config: SFTConfig,
    tokenizer: PreTrainedTokenizerBase,
    base_model_dir: Path,
    dataset: datasets.Dataset,
    max_truncated_share: float = DEFAULT_MAX_TRUNCATED_SHARE,
    measure_lengths: bool = True,
) -> dict[str, Any]:
    """Raise `SFTConfigError` for inputs that would train the wrong thing; return what was measured.

    `measure_lengths=False` skips the length census (it tokenises every row), for a launch
    that reuses a prepared train set whose census was taken when it was made."""
    template = _training_template(tokenizer) if config.assistant_only_loss else tokenizer.chat_template
    if template is None:
        raise SFTConfigError("the tokenizer has no chat template")
    generation_config = _generation_config(base_model_dir)
    _check_special_tokens(tokenizer, generation_config, template, eos_set_by_recipe=config.eos_token is not None)
    if config.assistant_only_loss:
        _check_assistant_masks(tokenizer, dataset, template, config.seed)
    report: dict[str, Any] = {"rows": len(dataset)}
    splits_overflow = config.packing and config.packing_strategy in ("bfd_split", "wrapped")
    if measure_lengths and config.max_length is not None and not splits_overflow:
        share, n_long, longest = truncated_share(tokenizer, dataset, template, config.max_length)
        report.update(truncated_share=share, truncated_rows=n_long, longest_row_tokens=longest)
        if share > max_truncated_share:
            raise SFTConfigError(
                f"{share:.1%} of train rows ({n_long}/{len(dataset)}) are longer than max_length={config.max_length} "
                f"tokens (longest {longest}) and would be truncated, losing their ends (and EOS); at most "
                f"{max_truncated_share:.1%} allowed: raise sft.args.max_length, filter long rows, or raise "
                "sft.args.max_truncated_share"
            )
    return report


def _generation_config(model_dir: Path) -> GenerationConfig:
    if (model_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(model_dir)
    return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _device_type() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    return "cpu"


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest `checkpoint-N` that was written to the end, or None.

    The trainer writes a checkpoint's `trainer_state.json` after its weights, optimizer and
    RNG states, so a folder without it was cut off by a kill (`kill -9` during a save); such
    folders are removed so that they are neither resumed from nor counted by the rotation.
    """
    if not checkpoint_dir.is_dir():
        return None
    steps = []
    for d in checkpoint_dir.glob("checkpoint-*"):
        if d.is_dir() and d.name.removeprefix("checkpoint-").isdigit():
            if (d / "trainer_state.json").is_file():
                steps.append((int(d.name.removeprefix("checkpoint-")), d))
            else:
                logger.warning("removing %s: it was not written to the end (interrupted save)", d)
                shutil.rmtree(d, ignore_errors=True)
    return str(max(steps)[1]) if steps else None


class _ComputeClock(TrainerCallback):
    """Keeps the training wall time of every session of a run in its checkpoints, so
    that a resumed run's card reports the compute of the whole run, not of its last piece."""

    FILE = "commonthoughts_compute.json"

    def __init__(self, resumed_from: str | None):
        prior = Path(resumed_from) / self.FILE if resumed_from else None
        self.prior_s = json.loads(prior.read_text())["wall_time_s"] if prior and prior.is_file() else 0.0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return self.prior_s + time.perf_counter() - self.start

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / self.FILE).write_text(json.dumps({"wall_time_s": round(self.elapsed(), 3)}))


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# SFTConfig fields that change what TRL's dataset preparation produces.
PREPARATION_FIELDS: tuple[str, ...] = (
    "max_length", "packing", "packing_strategy", "padding_free", "assistant_only_loss", "completion_only_loss",
    "dataset_text_field", "eos_token", "pad_token", "truncation_mode", "shuffle_dataset",
)  # fmt: skip


def preparation_key(
    config: SFTConfig, tokenizer: PreTrainedTokenizerBase, base_model_dir: Path, train_files: list[str], card: dict
) -> str:
    """What the tokenised (and packed) train set depends on: the dataset, the tokenizer, the
    preparation settings and the library versions.

    The dataset is named by its registry revision when the card has one (a git commit: the
    content's own hash), else by the bytes of the train files.
    """
    if card.get("dataset_repo") and card.get("dataset_revision"):
        dataset_id = f"{card['dataset_repo']}@{card['dataset_revision']}:" + ",".join(Path(f).name for f in train_files)
    else:
        dataset_id = _sha256_files([Path(f) for f in train_files])
    tok_files = sorted(p for p in base_model_dir.iterdir()
                       if p.is_file() and (p.name.startswith("tokenizer") or p.name in
                                           ("special_tokens_map.json", "chat_template.jinja", "vocab.json",
                                            "merges.txt", "added_tokens.json")))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(tokenizer.chat_template)
    doc = {
        "dataset": dataset_id,
        "tokenizer_files": _sha256_files(tok_files),
        "eos": tokenizer.eos_token, "pad": tokenizer.pad_token, "template": template,
        "config": {name: getattr(config, name, None) for name in PREPARATION_FIELDS},
        "versions": [trl.__version__, transformers.__version__, datasets.__version__],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class _PaddingCounter:
    """Wraps the trainer's collator to count the positions of every batch and
    the padding among them (attention mask zeros; a padding-free batch has none)."""

    def __init__(self, collator):
        self.collator, self.positions, self.padding = collator, 0, 0

    def __call__(self, features):
        batch = self.collator(features)
        ids = batch["input_ids"]
        self.positions += int(ids.numel())
        mask = batch.get("attention_mask")
        if mask is not None:
            self.padding += int(mask.numel() - mask.sum())
        return batch

    def padding_share(self) -> float | None:
        return round(self.padding / self.positions, 4) if self.positions else None


def run_sft(
    args: dict[str, Any],
    base_model_dir: Path,
    train_files: list[str],
    output_dir: Path,
    *,
    card: dict[str, Any],
    resume: bool = True,
    prepared_cache: Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Fine-tune the model in `base_model_dir` on `train_files`; save model, tokenizer and card to `output_dir`.

    `card` needs `recipe_name`, `recipe_version`, `fingerprint` and `dataset_repo`; optional
    `dataset_revision` and `base_model` (defaults to the base directory's name); other keys
    go to the card's `commonthoughts:` block as they are. Checkpoints live in
    `output_dir/checkpoints`; with `resume`, training continues from the last complete one.
    With `prepared_cache`, the train set as TRL prepares it (tokenised, masked, packed) is
    kept in `prepared_cache/<preparation_key>` and later launches load it instead of
    tokenising again. Works the same in one process and under `accelerate launch` (the main
    process prepares, the others wait and load). Returns wall_time_s, train_tokens, steps,
    final_loss, tokens_per_s, compute and what preflight measured; the main process also
    writes them to `output_dir/stats.json`.
    """
    started = time.perf_counter()
    base_model_dir, output_dir = Path(base_model_dir), Path(output_dir)
    missing = [k for k in REQUIRED_CARD_KEYS if not card.get(k)]
    if missing:
        raise SFTConfigError(f"model card fields missing: {missing}")
    checkpoint_dir = output_dir / "checkpoints"
    world_size = _world_size()
    config = build_sft_config(args, checkpoint_dir, world_size)
    set_seed(config.seed)

    tokenizer = load_tokenizer(base_model_dir)
    for name in ("eos_token", "pad_token"):  # what SFTTrainer would set, applied before the checks
        token = getattr(config, name)
        if token is not None:
            if token not in tokenizer.get_vocab():
                raise SFTConfigError(f"sft.args.{name}: {token!r} is not in the tokenizer's vocabulary")
            setattr(tokenizer, name, token)
    dataset = load_train_dataset(train_files)
    cached = None
    if prepared_cache is not None:
        cached = Path(prepared_cache) / preparation_key(config, tokenizer, base_model_dir, train_files, card)
    hit = cached is not None and (cached / "_SUCCESS").is_file()
    max_share = args.get("max_truncated_share", DEFAULT_MAX_TRUNCATED_SHARE)
    if hit:  # the length census was taken when the cache was made; the cheap checks run every time
        measured = json.loads((cached / "preflight.json").read_text())
        preflight(config, tokenizer, base_model_dir, dataset, max_share, measure_lengths=False)
    else:
        measured = preflight(config, tokenizer, base_model_dir, dataset, max_share)

    if not resume and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    state = PartialState()
    last = last_complete_checkpoint(checkpoint_dir) if state.is_main_process else None
    last = broadcast_object_list([last])[0] if state.num_processes > 1 else last
    clock = _ComputeClock(last)
    extra = [clock, *(callbacks or [])]
    with state.main_process_first():  # the main process prepares and stores; the others then load
        hit = cached is not None and (cached / "_SUCCESS").is_file()
        if hit:
            config.dataset_kwargs = {**(config.dataset_kwargs or {}), "skip_prepare_dataset": True}
            train_set = datasets.load_from_disk(str(cached / "data"))
        else:
            train_set = dataset
        # A prepared set carries its loss mask in `labels`; TRL would refuse assistant_only_loss on
        # rows that are no longer conversations, so the flag is off while the trainer is built.
        assistant_only = config.assistant_only_loss
        config.assistant_only_loss = assistant_only and not hit
        trainer = SFTTrainer(model=str(base_model_dir), args=config, train_dataset=train_set,
                             processing_class=tokenizer, callbacks=extra)
        config.assistant_only_loss = assistant_only  # as the recipe asked (shown on the card)
        if cached is not None and not hit and state.is_main_process:
            _store_prepared(cached, trainer.train_dataset, measured)
    counter = _PaddingCounter(trainer.data_collator)
    trainer.data_collator = counter
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    trainer.save_model(str(output_dir))

    tstate = trainer.state
    losses = [entry["loss"] for entry in tstate.log_history if "loss" in entry]
    session_tokens = tstate.num_input_tokens_seen - (TrainerState.load_from_json(
        str(Path(last) / "trainer_state.json")).num_input_tokens_seen if last else 0)
    run_wall = clock.elapsed()
    stats: dict[str, Any] = {
        "wall_time_s": round(wall, 3),
        "train_tokens": int(tstate.num_input_tokens_seen),
        "steps": int(tstate.global_step),
        "final_loss": losses[-1] if losses else None,
        "tokens_per_s": round(session_tokens / wall, 1) if wall > 0 else None,
        "train_loss": output.training_loss,
        "total_time_s": round(time.perf_counter() - started, 3),
        "world_size": world_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "resumed_from": Path(last).name if last else None,
        "prepared_cache_hit": hit if cached is not None else None,
        "padding_share": counter.padding_share(),
        "compute": {
            "wall_time_s": round(run_wall, 3),  # training time of every session of the run
            "train_tokens": int(tstate.num_input_tokens_seen),
            "devices": world_size,
            "device_type": _device_type(),
            "device_hours": round(run_wall * world_size / 3600, 6),
        },
        **measured,
    }
    if trainer.is_world_process_zero():
        write_model_card(output_dir, card=card, args=args, config=config, stats=stats, base_model_dir=base_model_dir)
        tmp = output_dir / ".stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=2, default=str))
        os.replace(tmp, output_dir / "stats.json")
    return stats


def _store_prepared(cached: Path, train_set: datasets.Dataset, measured: dict[str, Any]) -> None:
    """Save TRL's prepared train set under `cached`, atomically (built beside it, then renamed)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name[:12]}."))
    train_set.save_to_disk(str(tmp / "data"))
    (tmp / "preflight.json").write_text(json.dumps(measured))
    (tmp / "_SUCCESS").write_text("")
    try:
        os.rename(tmp, cached)
    except OSError:  # another run stored it first
        shutil.rmtree(tmp, ignore_errors=True)


def write_model_card(
    output_dir: Path,
    *,
    card: dict[str, Any],
    args: dict[str, Any],
    config: SFTConfig,
    stats: dict[str, Any],
    base_model_dir: Path,
) -> Path:
    """Write `output_dir/README.md`: Hub front matter with the recipe's provenance, then the run."""
    extra = {k: v for k, v in card.items() if k not in (*REQUIRED_CARD_KEYS, "dataset_revision", "base_model")}
    base_model = card.get("base_model") or base_model_dir.name
    meta = {
        "base_model": base_model,
        "datasets": [card["dataset_repo"]],
        "library_name": "transformers",
        "tags": ["commonthoughts", "sft"],
        "commonthoughts": {
            "recipe": {"name": card["recipe_name"], "version": card["recipe_version"]},
            "fingerprint": card["fingerprint"],
            "dataset": {"repo": card["dataset_repo"], "revision": card.get("dataset_revision")},
            **extra,
            "compute": stats.get("compute"),
        },
    }
    hyper = dict(args)
    hyper.update({name: getattr(config, name) for name in CARD_FIELDS if name not in hyper})
    hyper_rows = "\n".join(f"| `{k}` | `{_fmt(v)}` |" for k, v in hyper.items())
    stat_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in stats.items() if k != "compute")
    compute = stats.get("compute") or {}
    compute_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in compute.items())
    versions = f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
    body = f"""# {card["recipe_name"]} {card["recipe_version"]}

Supervised fine-tune of `{base_model}` on `{card["dataset_repo"]}` (revision `{card.get("dataset_revision")}`),
made by CommonThoughts recipe `{card["recipe_name"]}` version `{card["recipe_version"]}`
(fingerprint `{card["fingerprint"]}`), with TRL's `SFTTrainer` and loss on assistant tokens only.

## Hyperparameters

Recipe `sft.args`, then the effective values of the other main settings.

| name | value |
|---|---|
{hyper_rows}

## Run

| stat | value |
|---|---|
{stat_rows}

## Compute

Training only (data building and evaluation are not counted); across every session of a resumed run.

| | |
|---|---|
{compute_rows}

Software: {versions}.
"""
    path = output_dir / "README.md"
    path.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(getattr(value, "value", value))
