"""SFT runner: fail-fast checks on broken inputs, and a short real run on the nano student."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerState

from data_pipeline.nano.student import IM_END, build_student, load_tokenizer
from sft.trainer import SFTConfigError, build_sft_config, check_sft_args, run_sft

CARD = {
    "recipe_name": "nano-test",
    "recipe_version": "0.1.0",
    "fingerprint": "fp-1234abcd",
    "dataset_repo": "local/nano-test",
    "dataset_revision": "v0.1.0",
    "base_model": "nano-2m",
}
ARGS = {
    "learning_rate": 3e-3,
    "max_steps": 20,
    "per_device_train_batch_size": 8,
    "global_batch_size": 8,
    "max_length": 128,
    "logging_steps": 5,
    "save_steps": 10,
    "seed": 0,
    "disable_tqdm": True,
}

PLAIN_CHATML = (  # no {% generation %} markers
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
EOS_OUTSIDE = (  # markers, but the end-of-turn token is left out of the trained span
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
    "{% else %}{{ m['content'] }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
)


def trace(a: int, b: int) -> str:
    """Digit-by-digit addition, least significant digit first."""
    lines, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        lines.append(f"{x}+{y}+{carry}={x + y + carry}")
        carry = (x + y + carry) // 10
    return "\n".join(lines) + f"\nAnswer: {a + b}"


def write_chats(path: Path, n: int = 64, seed: int = 0, extra: list | None = None) -> str:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(1000), rng.randrange(1000)
        rows.append([{"role": "user", "content": f"Compute {a} + {b}."}, {"role": "assistant", "content": trace(a, b)}])
    rows += extra or []
    pq.write_table(pa.table({"messages": rows, "id": [f"r{i}" for i in range(len(rows))]}), path)
    return str(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    build_student(root / "base")
    write_chats(root / "train.parquet")
    return root


def broken_student(work: Path, name: str, edit) -> Path:
    """A copy of the base student with one file edited."""
    target = work / name
    if not target.exists():
        shutil.copytree(work / "base", target)
        edit(target)
    return target


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def run(work: Path, base: Path, out: str, train: str | None = None, **overrides):
    args = {**ARGS, **overrides}
    return run_sft(args, base, [train or str(work / "train.parquet")], work / out, card=CARD)


# --- checks on sft.args ----------------------------------------------------------------


def test_unknown_arg_suggests_field():
    problems = check_sft_args({"max_seq_length": 256, "learning_rat": 1e-3, "learning_rate": 1e-3})
    assert len(problems) == 2
    assert "sft.args.max_seq_length" in problems[0] and "`max_length`" in problems[0]
    assert "sft.args.learning_rat" in problems[1] and "`learning_rate`" in problems[1]
    assert check_sft_args({**ARGS, "max_truncated_share": 0.1}) == []
    assert any("output_dir" in p for p in check_sft_args({"output_dir": "x"}))
    assert any("global_batch_size" in p for p in check_sft_args({"global_batch_size": 0}))


def test_unknown_arg_fails_run(work):
    with pytest.raises(SFTConfigError, match=r"sft\.args\.max_seq_length.*max_length"):
        run(work, work / "base", "unknown", max_seq_length=64)


def test_global_batch_size(work, tmp_path):
    config = build_sft_config({"per_device_train_batch_size": 8, "global_batch_size": 32}, tmp_path, world_size=2)
    assert config.gradient_accumulation_steps == 2
    assert config.assistant_only_loss and config.report_to == []
    assert config.train_sampling_strategy == "random"  # never grouped by length unless asked
    assert config.activation_checkpointing is False and config.bf16 is False
    grouped = build_sft_config({"train_sampling_strategy": "group_by_length"}, tmp_path)
    assert grouped.train_sampling_strategy == "group_by_length"
    with pytest.raises(SFTConfigError, match="not divisible"):
        run(work, work / "base", "gbs", per_device_train_batch_size=4, global_batch_size=10)
    with pytest.raises(SFTConfigError, match="disagrees"):
        build_sft_config({"per_device_train_batch_size": 4, "global_batch_size": 8, "gradient_accumulation_steps": 4}, tmp_path)


# --- checks on the model, tokenizer and data -------------------------------------------


def test_template_without_generation_markers(work):
    base = broken_student(work, "plain", lambda d: (d / "chat_template.jinja").write_text(PLAIN_CHATML))
    with pytest.raises(SFTConfigError, match="generation"):
        run(work, base, "plain-out")


def test_template_leaves_eos_untrained(work):
    base = broken_student(work, "eos-outside", lambda d: (d / "chat_template.jinja").write_text(EOS_OUTSIDE))
    with pytest.raises(SFTConfigError, match="EOS disagreement"):
        run(work, base, "eos-outside-out")


def test_pad_equals_eos(work):
    base = broken_student(work, "pad-eos", lambda d: edit_json(d / "tokenizer_config.json", pad_token=IM_END))
    assert load_tokenizer(base).pad_token == IM_END
    with pytest.raises(SFTConfigError, match="pad token == eos"):
        run(work, base, "pad-eos-out")


def test_generation_config_eos_disagrees(work):
    eot = load_tokenizer(work / "base").convert_tokens_to_ids("<|endoftext|>")
    base = broken_student(work, "gen-eos", lambda d: edit_json(d / "generation_config.json", eos_token_id=eot))
    with pytest.raises(SFTConfigError, match="EOS disagreement.*generation_config"):
        run(work, base, "gen-eos-out")


def test_row_without_assistant_turn(work):
    train = write_chats(work / "no-assistant.parquet", n=8, extra=[[{"role": "user", "content": "hi"}]] * 40)
    with pytest.raises(SFTConfigError, match="no assistant message"):
        run(work, work / "base", "no-assistant-out", train=train)


def test_too_many_long_rows(work):
    with pytest.raises(SFTConfigError, match=r"100\.0% of train rows \(64/64\) are longer than max_length=32"):
        run(work, work / "base", "long-out", max_length=32)
    long_row = [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "y"}]
    train = write_chats(work / "one-long.parquet", n=63, extra=[long_row])
    with pytest.raises(SFTConfigError, match=r"1\.6% of train rows \(1/64\)"):
        run(work, work / "base", "long-out", train=train, max_truncated_share=0.01)


# --- a real run ----------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Train on one thread: on a shared 2-core machine, two spinning OpenMP threads run up to 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_short_training_run(work, one_thread):
    stats = run(work, work / "base", "trained")
    out = work / "trained"
    assert stats["steps"] == 20 and stats["train_tokens"] > 0 and stats["tokens_per_s"] > 0
    assert stats["truncated_share"] == 0.0 and stats["resumed_from"] is None
    # padded batches of rows of different lengths: some positions are padding, not most
    assert 0.0 < stats["padding_share"] < 0.9
    state = TrainerState.load_from_json(str(out / "checkpoints" / "checkpoint-20" / "trainer_state.json"))
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.75 * losses[0], losses
    assert stats["final_loss"] == pytest.approx(losses[-1])

    # The saved model and tokenizer load and generate; EOS and pad survive training.
    tokenizer = load_tokenizer(out)
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token != tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.eos_token_id in (tokenizer.eos_token_id, [tokenizer.eos_token_id])
    prompt = [{"role": "user", "content": "Compute 12 + 34."}]
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    text = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :])
    assert "+" in text  # it has started to learn the trace format

    # The card carries the recipe's provenance and the run.
    card_text = (out / "README.md").read_text()
    meta = yaml.safe_load(card_text.split("---")[1])
    assert meta["commonthoughts"]["fingerprint"] == CARD["fingerprint"]
    assert meta["commonthoughts"]["recipe"] == {"name": "nano-test", "version": "0.1.0"}
    assert meta["commonthoughts"]["dataset"] == {"repo": "local/nano-test", "revision": "v0.1.0"}
    assert meta["tags"] == ["commonthoughts", "sft"] and meta["base_model"] == "nano-2m"
    for needle in ("`learning_rate`", "`global_batch_size`", "`gradient_accumulation_steps`", "final_loss", "wall_time_s"):
        assert needle in card_text

    # Resuming picks up the last checkpoint and only runs the missing steps.
    more = run(work, work / "base", "trained", max_steps=24)
    assert more["resumed_from"] == "checkpoint-20" and more["steps"] == 24
    assert more["train_tokens"] > stats["train_tokens"]


def test_pinned_dataset_must_match_the_recipe_and_the_error_names_the_stage(tmp_path):
    """sft.dataset pins a published revision; a card whose fingerprint is not
    the recipe's is refused, naming the first stage that differs."""
    import json as _json

    from data_pipeline.cache import StageCache
    from data_pipeline.errors import PipelineError
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registry import LocalRegistry
    from data_pipeline.registries import load_plugins
    from sft.cli import ensure_dataset

    load_plugins()
    src = Path(__file__).parent / "recipes" / "good" / "small.yaml"
    d = tmp_path / "recipes"
    d.mkdir()
    base = d / "small.yaml"
    base.write_text(src.read_text())
    cache, registry = StageCache(tmp_path / "cache"), LocalRegistry(tmp_path / "registry")
    repo, rev, fp = ensure_dataset(load_recipe(base), cache, registry)  # builds and publishes local/small

    pinned = d / "pinned.yaml"
    pinned.write_text(src.read_text().replace("sft:\n  model: {init: nano-2m}",
                                              "sft:\n  dataset: {repo: local/small}\n  model: {init: nano-2m}"))
    assert "dataset:" in pinned.read_text()
    assert ensure_dataset(load_recipe(pinned), cache, registry) == (repo, rev, fp)

    changed = d / "changed.yaml"
    changed.write_text(pinned.read_text().replace("verify: {keep: correct}", "verify: {keep: all}"))
    with pytest.raises(PipelineError, match=r"not made by this recipe: stage 6 'verify' \(verify\) differs first: "
                                            r"its parameters or its input differ"):
        ensure_dataset(load_recipe(changed), cache, registry)
    missing = d / "missing.yaml"
    missing.write_text(pinned.read_text().replace("{repo: local/small}", "{repo: local/small, revision: v9.9.9}"))
    with pytest.raises(PipelineError, match="has no revision 'v9.9.9'"):
        ensure_dataset(load_recipe(missing), cache, registry)


# --- scale: tokenisation cache, kill -9 resume, accelerate launch ------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_prepared_train_set_is_cached_by_dataset_and_tokenizer(work, one_thread):
    """The second launch loads TRL's prepared (tokenised, masked) train set instead of
    preparing it again, and trains exactly as the first; a preparation setting or a
    different tokenizer misses the cache."""
    from sft.trainer import build_sft_config, preparation_key

    cache = work / "prepared"
    args = {**ARGS, "max_steps": 6, "save_strategy": "no"}
    files = [str(work / "train.parquet")]
    first = run_sft(args, work / "base", files, work / "cache-1", card=CARD, prepared_cache=cache)
    assert first["prepared_cache_hit"] is False and len(list(cache.iterdir())) == 1
    second = run_sft(args, work / "base", files, work / "cache-2", card=CARD, prepared_cache=cache)
    assert second["prepared_cache_hit"] is True
    assert second["truncated_share"] == first["truncated_share"]  # the census kept with the cache
    a, b = _weights(work / "cache-1"), _weights(work / "cache-2")
    assert all(torch.equal(a[k], b[k]) for k in a)  # loss mask and order unchanged by the cache

    tok = load_tokenizer(work / "base")
    key = preparation_key(build_sft_config(args, work / "k"), tok, work / "base", files, CARD)
    assert (cache / key / "_SUCCESS").is_file()
    assert preparation_key(build_sft_config({**args, "max_length": 96}, work / "k"), tok, work / "base", files,
                           CARD) != key
    other_tok = broken_student(work, "other-template", lambda d: edit_json(
        d / "tokenizer_config.json", chat_template=json.loads((d / "tokenizer_config.json").read_text())
        .get("chat_template", "") + " "))
    assert preparation_key(build_sft_config(args, work / "k"), load_tokenizer(other_tok), other_tok, files,
                           CARD) != key
    other_data = write_chats(work / "train-other.parquet", seed=1)
    assert preparation_key(build_sft_config(args, work / "k"), tok, work / "base", [other_data],
                           {k: v for k, v in CARD.items() if k != "dataset_revision"}) != key


KILLABLE = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from sft.trainer import run_sft
work, out, slow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "slow"
class Slow(TrainerCallback):  # gives the test time to kill the run between checkpoints
    def on_step_end(self, args, state, control, **kw):
        if slow and state.global_step > 10:
            time.sleep(0.5)
args = dict(learning_rate=3e-3, max_steps=24, per_device_train_batch_size=8, global_batch_size=8, max_length=128,
            logging_steps=4, save_steps=8, seed=0, disable_tqdm=True)
card = dict(recipe_name="nano-test", recipe_version="0.1.0", fingerprint="fp-1234abcd", dataset_repo="local/nano-test")
import torch; torch.set_num_threads(1)
run_sft(args, work / "base", [str(work / "train.parquet")], out, card=card, prepared_cache=work / "prepared-kill",
        callbacks=[Slow()])
"""


def test_kill_9_then_resume_gives_the_uninterrupted_model(work, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "PYTHONPATH": str(root)}

    def start(out: Path, mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(work), str(out), mode], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    straight = start(tmp_path / "straight", "fast")
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-2000:]

    killed_out = tmp_path / "killed"
    victim = start(killed_out, "slow")
    marker = killed_out / "checkpoints" / "checkpoint-16" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.is_file() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.is_file() and victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_out / "model.safetensors").exists()
    # A save cut off by the kill leaves a checkpoint folder without its state: not resumed from.
    (killed_out / "checkpoints" / "checkpoint-24").mkdir()

    resumed = start(killed_out, "fast")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    stats = json.loads((killed_out / "stats.json").read_text())
    assert stats["resumed_from"] == "checkpoint-16" and stats["steps"] == 24
    assert stats["prepared_cache_hit"] is True  # the straight run prepared it
    a, b = _weights(tmp_path / "straight"), _weights(killed_out)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    # the card's compute covers the killed session too, not only the resumed one
    meta = yaml.safe_load((killed_out / "README.md").read_text().split("---")[1])
    assert meta["commonthoughts"]["compute"]["wall_time_s"] > stats["wall_time_s"]
    assert meta["commonthoughts"]["compute"]["train_tokens"] == stats["train_tokens"]


@pytest.mark.slow
def test_make_sft_launches_through_accelerate_with_the_recipes_config(workdir: Path, capsys):
    """A recipe with `sft.accelerate` trains under `accelerate launch` (two CPU processes with
    the shipped DDP config); the data is built and the model published once, by the parent."""
    from data_pipeline.registry import LocalRegistry
    from sft.cli import main as sft_main

    recipe = Path(__file__).resolve().parent / "recipes/good/small-ddp.yaml"
    assert sft_main(["train", str(recipe), "--num-processes", "2"]) == 0
    err = capsys.readouterr().err
    assert "running the data stages" in err and err.count("published models/local/small-ddp") == 1
    assert "accelerate.commands.launch --config_file" in err and "recipes/accelerate/ddp.yaml --num_processes 2" in err
    card = LocalRegistry().card("models", "local/small-ddp", "v1.0.0")
    compute = card["commonthoughts"]["compute"]
    assert compute["devices"] == 2 and compute["device_type"] == "cpu" and compute["device_hours"] > 0
    assert compute["train_tokens"] > 0
