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
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
import yaml
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerBase, TrainerState, set_seed
from transformers.trainer_utils import get_last_checkpoint
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
    on_cpu = _on_cpu(args)
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
) -> dict[str, Any]:
    """Raise `SFTConfigError` for inputs that would train the wrong thing; return what was measured."""
    template = _training_template(tokenizer) if config.assistant_only_loss else tokenizer.chat_template
    if template is None:
        raise SFTConfigError("the tokenizer has no chat template")
    generation_config = _generation_config(base_model_dir)
    _check_special_tokens(tokenizer, generation_config, template, eos_set_by_recipe=config.eos_token is not None)
    if config.assistant_only_loss:
        _check_assistant_masks(tokenizer, dataset, template, config.seed)
    report: dict[str, Any] = {"rows": len(dataset)}
    splits_overflow = config.packing and config.packing_strategy in ("bfd_split", "wrapped")
    if config.max_length is not None and not splits_overflow:
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
) -> dict[str, Any]:
    """Fine-tune the model in `base_model_dir` on `train_files`; save model, tokenizer and card to `output_dir`.

    `card` needs `recipe_name`, `recipe_version`, `fingerprint` and `dataset_repo`; optional
    `dataset_revision` and `base_model` (defaults to the base directory's name); other keys
    go to the card's `commonthoughts:` block as they are. Checkpoints live in
    `output_dir/checkpoints`; with `resume`, training continues from the last one.
    Returns wall_time_s, train_tokens, steps, final_loss, tokens_per_s and what preflight measured.
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
    measured = preflight(
        config, tokenizer, base_model_dir, dataset, args.get("max_truncated_share", DEFAULT_MAX_TRUNCATED_SHARE)
    )

    if not resume and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    trainer = SFTTrainer(model=str(base_model_dir), args=config, train_dataset=dataset, processing_class=tokenizer)
    counter = _PaddingCounter(trainer.data_collator)
    trainer.data_collator = counter
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    trainer.save_model(str(output_dir))

    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    session_tokens = state.num_input_tokens_seen - (TrainerState.load_from_json(
        str(Path(last) / "trainer_state.json")).num_input_tokens_seen if last else 0)
    stats: dict[str, Any] = {
        "wall_time_s": round(wall, 3),
        "train_tokens": int(state.num_input_tokens_seen),
        "steps": int(state.global_step),
        "final_loss": losses[-1] if losses else None,
        "tokens_per_s": round(session_tokens / wall, 1) if wall > 0 else None,
        "train_loss": output.training_loss,
        "total_time_s": round(time.perf_counter() - started, 3),
        "world_size": world_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "resumed_from": Path(last).name if last else None,
        "padding_share": counter.padding_share(),
        **measured,
    }
    if trainer.is_world_process_zero():
        write_model_card(output_dir, card=card, args=args, config=config, stats=stats, base_model_dir=base_model_dir)
    return stats


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
        },
    }
    hyper = dict(args)
    hyper.update({name: getattr(config, name) for name in CARD_FIELDS if name not in hyper})
    hyper_rows = "\n".join(f"| `{k}` | `{_fmt(v)}` |" for k, v in hyper.items())
    stat_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in stats.items())
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

Software: {versions}.
"""
    path = output_dir / "README.md"
    path.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(getattr(value, "value", value))
