"""`python -m bench.sft_gpu`: SFT throughput of a ~0.5B student on a GPU, through the
project's own trainer (`sft.trainer.run_sft`) under `accelerate launch` with the shipped
ZeRO-2 config, with and without packing, side by side in one run.

The student is `byte-500m` (a Qwen2 of 514M parameters made from a config, with the nano
byte-level tokenizer); the data is the nano base recipe's SFT set (6,450 conversations of
~164 tokens), so a padded batch wastes little and a packed one fills 2,048-token rows.
Reported per variant: steady-state training tokens/s (non-padding tokens, from step
`--warmup` to the end), model FLOPs utilisation, peak GPU memory, padding share, loss.

    python -m bench.sft_gpu --data train.parquet --out DIR            # launches each variant
    python -m bench.sft_gpu --data train.parquet --out DIR --launcher none --student nano-2m --smoke   # CPU check

MFU = tokens/s x FLOPs per token / peak dense bf16 FLOP/s of the device, with FLOPs per
token = 6 x (non-embedding parameters + LM head) + 12 x layers x hidden x mean document
length (attention inside each packed document); activation recomputation is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZERO2 = ROOT / "recipes" / "accelerate" / "zero2.yaml"
# Dense bf16 peak (no sparsity) by device name, from NVIDIA's data sheets.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}

COMMON = {
    "learning_rate": 3e-4, "lr_scheduler_type": "cosine", "warmup_steps": 10, "weight_decay": 0.0,
    "logging_steps": 10, "save_strategy": "no", "seed": 0, "activation_checkpointing": False,
    "dataloader_num_workers": 0, "max_truncated_share": 0.0,
}  # fmt: skip
# About 32k token positions per optimizer step in every variant.
PACKED = {"packing": True, "packing_strategy": "bfd", "padding_free": True, "max_length": 2048}
VARIANTS: dict[str, dict] = {
    # The run the issue asks for: ZeRO-2 and packing. Padding-free batches are one long
    # sequence; with SDPA, transformers turns the packed position ids into a block-diagonal
    # mask, so attention still costs (micro-batch tokens)^2: micro-batches of 4 x 2048.
    "zero2_packed_sdpa": {**PACKED, "per_device_train_batch_size": 4, "global_batch_size": 16},
    "zero2_padded_sdpa": {"max_length": 512, "per_device_train_batch_size": 128, "global_batch_size": 128},
    # FlexAttention skips the masked blocks, so one micro-batch can hold the whole step.
    "zero2_packed_flex": {**PACKED, "per_device_train_batch_size": 16, "global_batch_size": 16,
                          "model_init_kwargs": {"attn_implementation": "flex_attention"}},
    "zero2_packed_sdpa_liger": {**PACKED, "per_device_train_batch_size": 4, "global_batch_size": 16,
                                "use_liger_kernel": True},
}
# `--smoke`: the same code path at CPU size.
SMOKE = {"max_length": 256, "per_device_train_batch_size": 2, "global_batch_size": 4}


class StepTimer:
    """Steady-state clock: tokens and seconds from step `warmup` to the last step."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == timer.warmup:
                    timer._sync()
                    timer.t0, timer.tok0 = time.perf_counter(), state.num_input_tokens_seen

            def on_train_end(self, args, state, control, **kw):
                timer._sync()
                timer.t1, timer.tok1, timer.steps = time.perf_counter(), state.num_input_tokens_seen, state.global_step

        self.warmup, self.callback = warmup, _CB()
        self.t0 = self.t1 = self.tok0 = self.tok1 = self.steps = None

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def result(self) -> dict:
        if self.t0 is None or self.t1 is None or self.t1 <= self.t0:
            return {}
        return {"steady_steps": self.steps - self.warmup, "steady_s": round(self.t1 - self.t0, 3),
                "steady_tokens": int(self.tok1 - self.tok0),
                "steady_tokens_per_s": round((self.tok1 - self.tok0) / (self.t1 - self.t0), 1)}


def _saved_parameters(weights: Path) -> int:
    """Parameters in a safetensors file, from its header (no second copy of the model in memory)."""
    import math

    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def flops_per_token(config, mean_doc_tokens: float) -> float:
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    dense = layers * per_layer + h * config.vocab_size  # + LM head
    return 6 * dense + 12 * layers * h * mean_doc_tokens


def worker(ns) -> int:
    import torch
    from transformers import AutoConfig

    from sft.trainer import run_sft

    args = {**COMMON, **VARIANTS[ns.variant], "max_steps": ns.steps}
    if ns.smoke:
        args.update(SMOKE)
    if not torch.cuda.is_available():
        args.update(use_cpu=True, bf16=False)
        args.pop("model_init_kwargs", None)
    timer = StepTimer(ns.warmup)
    out = Path(ns.out) / ns.variant
    card = {"recipe_name": "bench-sft-gpu", "recipe_version": "0", "fingerprint": "0" * 64,
            "dataset_repo": "local/nano-base", "base_model": ns.student}
    stats = run_sft(args, Path(ns.model), [ns.data], out, card=card, resume=False,
                    prepared_cache=Path(ns.out) / "prepared", callbacks=[timer.callback])
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    config = AutoConfig.from_pretrained(ns.model)
    doc = {"variant": ns.variant, "args": args, **timer.result(),
           **{k: stats.get(k) for k in ("steps", "train_tokens", "wall_time_s", "tokens_per_s", "padding_share",
                                        "final_loss", "world_size", "compute")}}
    fpt = flops_per_token(config, ns.mean_doc_tokens)
    doc["flops_per_token"] = round(fpt)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        doc["device"] = name
        doc["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if peak and doc.get("steady_tokens_per_s"):
            doc["mfu"] = round(doc["steady_tokens_per_s"] * fpt / peak, 4)
    (Path(ns.out) / f"{ns.variant}.json").write_text(json.dumps(doc, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sft_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="parquet file(s) with a `messages` column")
    ap.add_argument("--out", required=True)
    ap.add_argument("--student", default="byte-500m")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=300, help="steps of the first variant")
    ap.add_argument("--other-steps", type=int, default=100, help="steps of the other variants")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip variants that would start after this")
    ap.add_argument("--launcher", choices=["accelerate", "none"], default="accelerate")
    ap.add_argument("--smoke", action="store_true", help="small batches and rows: a CPU check of the code path")
    ap.add_argument("--worker", metavar="VARIANT", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mean-doc-tokens", type=float, default=0.0, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.worker:
        ns.variant = ns.worker
        return worker(ns)

    import pyarrow.parquet as pq
    import torch

    from data_pipeline.nano.student import build_student, load_tokenizer

    started = time.perf_counter()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_student(out / "model", ns.student, seed=0)
    n_params = _saved_parameters(model_dir / "model.safetensors")
    tok = load_tokenizer(model_dir)
    rows = pq.read_table(ns.data, columns=["messages"]).to_pylist()
    lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in rows[:2000]]
    mean_doc = sum(lengths) / len(lengths)
    results, skipped = {}, []
    for i, variant in enumerate(ns.variants.split(",")):
        if time.perf_counter() - started > ns.budget_s:
            skipped.append(variant)
            continue
        steps = ns.steps if i == 0 else ns.other_steps
        inner = [sys.executable, "-m", "bench.sft_gpu", "--data", ns.data, "--out", str(out), "--student", ns.student,
                 "--worker", variant, "--model", str(model_dir), "--steps", str(steps), "--warmup", str(ns.warmup),
                 "--mean-doc-tokens", str(mean_doc), *(["--smoke"] if ns.smoke else [])]
        cmd = inner if ns.launcher == "none" else [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO2), "--num_processes", "1",
            "-m", *inner[2:]]
        print("$ " + shlex.join(cmd), flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        res_file = out / f"{variant}.json"
        results[variant] = json.loads(res_file.read_text()) if rc == 0 and res_file.is_file() else {"error": f"exit {rc}"}
        results[variant]["launch_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps({variant: results[variant]}, default=str), flush=True)
    base = results.get("zero2_padded_sdpa", {}).get("steady_tokens_per_s")
    ratios = {k: round(v["steady_tokens_per_s"] / base, 3) for k, v in results.items()
              if base and v.get("steady_tokens_per_s")}
    doc = {
        "benchmark": "sft_gpu",
        "student": ns.student, "parameters": n_params, "mean_document_tokens": round(mean_doc, 1),
        "launcher": f"accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 1"
        if ns.launcher == "accelerate" else "in process",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "accelerate")},
        "runs": results, "tokens_per_s_over_padded": ratios, "skipped_for_time": skipped,
        "total_s": round(time.perf_counter() - started, 1),
    }
    (out / "sft_gpu.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
