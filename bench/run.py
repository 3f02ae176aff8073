"""Benchmarks of the nano track, measured side by side in one run.

`nano`: the base recipe end to end from empty caches (wall time per stage,
per phase and in total), then the verification-off ablation, whose data
stages reuse the teacher's answers from the cache (its data time as a share
of the first run's), then the weak-teacher ablation; each scored on
nano-bench, with paired bootstraps of each ablation against base. Writes
`bench/results/nano_run.json` and `bench/results/nano_calibration.json`.

`distill`: the distill stage against a real OpenAI-compatible server on
loopback (`transformers serve --continuous-batching`, a tiny random Qwen2),
requests per second at concurrency 1 and at the recipe's concurrency, side by
side in one run (alternating, two rounds, each from an empty cache). Writes
`bench/results/distill_endpoint.json`.

`scaling`: the nano base recipe's data stages on 1 and 2 local workers, side
by side (bench/scaling.py); writes `bench/results/data_scaling.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _env() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _run_recipe(path: Path) -> dict:
    """Data, SFT and eval of one recipe, each phase timed."""
    from data_pipeline.cache import StageCache
    from data_pipeline.pipeline import run_data
    from data_pipeline.publish import publish_dataset
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registry import LocalRegistry
    from eval.cli import run as eval_run
    from sft.cli import train

    recipe = load_recipe(path)
    t0 = time.perf_counter()
    result = run_data(recipe, StageCache())
    publish_dataset(recipe, result, StageCache(), LocalRegistry())
    t1 = time.perf_counter()
    train(str(path), if_missing=True)
    t2 = time.perf_counter()
    out = eval_run(str(path), echo=lambda *a, **k: None)
    t3 = time.perf_counter()
    res = json.loads((out / "results.json").read_text())
    return {
        "recipe": recipe.name,
        "stages": [{"stage": f["stage"], "seconds": f["seconds"], "cached": f["cached"], "rows_out": f["rows_out"]}
                   for f in result.funnel()],
        "data_s": round(t1 - t0, 2), "sft_s": round(t2 - t1, 2), "eval_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
        "sft_rows": result.stages[-1].stats["rows_out"],
        "pass@1": res["benchmarks"]["nano-bench"]["metrics"]["pass@1"],
        "pass@1_ci95": res["benchmarks"]["nano-bench"]["metrics"]["pass@1_ci95"],
        "results_dir": str(out),
    }


def bench_nano() -> list[Path]:
    from data_pipeline.registries import load_plugins
    from eval.cli import compare

    load_plugins()
    with tempfile.TemporaryDirectory(prefix="ct-bench-") as tmp:
        os.environ["COMMONTHOUGHTS_CACHE"] = str(Path(tmp) / "cache")
        os.environ["COMMONTHOUGHTS_REGISTRY"] = str(Path(tmp) / "registry")
        runs = {name: _run_recipe(ROOT / "recipes" / "nano" / f"{name}.yaml")
                for name in ("base", "no-verify", "weak-teacher")}
        comparisons = {name: compare(runs["base"]["results_dir"], runs[name]["results_dir"], n_boot=5000)["nano-bench"]
                       for name in ("no-verify", "weak-teacher")}
    base, nov = runs["base"], runs["no-verify"]
    nano_run = {
        "benchmark": "nano_run",
        "env": _env(),
        "first_run": {k: base[k] for k in ("stages", "data_s", "sft_s", "eval_s", "total_s")},
        "second_run_only_verify_changed": {"stages": nov["stages"], "data_s": nov["data_s"]},
        "second_data_over_first_data": round(nov["data_s"] / base["data_s"], 4),
        "targets": {"total_s": "< 300", "second_data_over_first_data": "< 0.10"},
    }
    calibration = {
        "benchmark": "nano_calibration",
        "env": _env(),
        "runs": {k: {x: v[x] for x in ("recipe", "sft_rows", "pass@1", "pass@1_ci95")} for k, v in runs.items()},
        "paired_vs_base": comparisons,
        "target": "no-verify scores lower than base with p < 0.05",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc in (("nano_run", nano_run), ("nano_calibration", calibration)):
        p = RESULTS / f"{name}.json"
        p.write_text(json.dumps(doc, indent=2) + "\n")
        paths.append(p)
    return paths


DISTILL_CONCURRENCY = 8  # the bench recipe's runtime.concurrency


def _distill_recipe(folder: Path, base_url: str, model: str, concurrency: int) -> Path:
    recipe = {
        "name": f"distill-bench-c{concurrency}", "version": "1.0.0",
        "data": {"sources": {"arith": {"uri": "nano://arith?levels=1-3", "count": 96, "seed": 11}},
                 "execution": {"tasks": 1, "workers": 1},
                 "stages": {"dedup": {"method": "exact"},
                            "distill": {"engine": "endpoint", "model": model, "samples": 2,
                                        "sampling": {"temperature": 0.0, "max_tokens": 32},
                                        "runtime": {"base_url": base_url, "concurrency": concurrency}}}},
        "sft": {"model": {"init": "nano-2m"}, "args": {"max_steps": 1, "max_length": 128}},
        "eval": {"benchmarks": ["nano-bench"]},
    }
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    path = folder / "recipes" / f"c{concurrency}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def bench_distill() -> list[Path]:
    from data_pipeline.cache import StageCache
    from data_pipeline.engines import GenerationRequest, Sampling, get_engine
    from data_pipeline.engines.local_server import TransformersServe, build_tiny_chat_model
    from data_pipeline.pipeline import run_data
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins

    load_plugins()
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ct-bench-distill-") as tmp:
        tmp_path = Path(tmp)
        model = str(build_tiny_chat_model(tmp_path / "tiny"))
        with TransformersServe(model, extra_args=("--continuous-batching",), log_path=tmp_path / "serve.log") as server:
            for c in (DISTILL_CONCURRENCY, 1):  # warm the server up at both concurrencies
                warm = get_engine("endpoint", model, base_url=server.base_url, concurrency=c)
                warm.generate([GenerationRequest.from_messages([{"role": "user", "content": f"warm up {i}"}], 0, i)
                               for i in range(16)], Sampling(0.0, 1.0, 32))
            for r in range(3):
                for c in (1, DISTILL_CONCURRENCY):
                    recipe = load_recipe(_distill_recipe(tmp_path, server.base_url, model, c))
                    result = run_data(recipe, StageCache(tmp_path / f"cache-{r}-{c}"), echo=lambda *a, **k: None)
                    st = {s.stage.id: s for s in result.stages}["distill"]
                    extra = st.stats["extra"]
                    rounds.append({"round": r, "concurrency": c, "requests": extra["requests_new"],
                                   "stage_s": round(st.seconds, 3),
                                   "requests_per_s": round(extra["requests_new"] / st.seconds, 2),
                                   "failed": sum(v for k, v in extra.items() if k.startswith("failed/"))})

    def median_rps(c: int) -> float:
        xs = sorted(x["requests_per_s"] for x in rounds if x["concurrency"] == c)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    doc = {
        "benchmark": "distill_endpoint",
        "env": _env(),
        "server": "transformers serve --continuous-batching, tiny random Qwen2 (2 layers, 64 wide), CPU",
        "rounds": rounds,
        "requests_per_s": {"concurrency_1": median_rps(1), f"concurrency_{DISTILL_CONCURRENCY}": median_rps(DISTILL_CONCURRENCY)},
        "speedup": round(median_rps(DISTILL_CONCURRENCY) / median_rps(1), 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / "distill_endpoint.json"
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return [p]


def bench_sft() -> list[Path]:
    """SFT of the nano student on the nano base recipe's data, side by side in
    one run: padded batches, then packing (TRL's `bfd`, padding-free). Training
    tokens per second (non-padding tokens) and the share of padding positions."""
    import torch

    from data_pipeline.cache import StageCache
    from data_pipeline.nano.student import build_student
    from data_pipeline.pipeline import run_data
    from data_pipeline.publish import SFT_COLUMNS
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins
    from sft.trainer import run_sft

    load_plugins()
    torch.set_num_threads(2)
    recipe = load_recipe(ROOT / "recipes" / "nano" / "base.yaml")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="ct-bench-sft-") as tmp:
        tmp_path = Path(tmp)
        cache = StageCache(tmp_path / "cache")
        result = run_data(recipe, cache, echo=lambda *a, **k: None)
        table = cache.read(result.stages[-1].stage.fingerprint).select(SFT_COLUMNS)
        import pyarrow.parquet as pq

        pq.write_table(table, tmp_path / "train.parquet")
        base = build_student(tmp_path / "student", "nano-2m", seed=0)
        args = {k: v for k, v in recipe.spec.sft.args.items() if k not in ("max_steps",)}
        args.update(max_steps=80, logging_steps=20, save_strategy="no")
        card = {"recipe_name": "bench", "recipe_version": "0", "fingerprint": "0" * 64, "dataset_repo": "local/bench"}
        for name, extra in (("padded", {}), ("packed_bfd", {"packing": True, "packing_strategy": "bfd",
                                                          "padding_free": True})):
            stats = run_sft({**args, **extra}, base, [str(tmp_path / "train.parquet")], tmp_path / name, card=card,
                            resume=False)
            runs[name] = {k: stats[k] for k in ("steps", "train_tokens", "wall_time_s", "tokens_per_s", "padding_share",
                                                "final_loss")}
    doc = {
        "benchmark": "sft_packing",
        "env": _env(),
        "model": "nano-2m (config-made Qwen2, CPU, fp32, 2 threads)",
        "data": "recipes/nano/base.yaml, 80 steps of 32 sequences, max_length 256",
        "runs": runs,
        "tokens_per_s_packed_over_padded": round(runs["packed_bfd"]["tokens_per_s"] / runs["padded"]["tokens_per_s"], 3),
        "note": ("on CPU the padding-free packed batch is one long sequence with no variable-length attention "
                 "kernel; on GPU with flash attention packing is the faster layout"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / "sft_packing.json"
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return [p]


def _curation(name: str):
    def run() -> list[Path]:
        from bench import curation

        return getattr(curation, f"bench_{name}")()
    return run


def _scaling() -> list[Path]:
    from bench.scaling import bench_scaling

    return bench_scaling()


BENCHES = {"nano": bench_nano, "distill": bench_distill, "sft": bench_sft, "dedup": _curation("dedup"),
           "decontaminate": _curation("decontaminate"), "scoring": _curation("scoring"), "scaling": _scaling}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {sorted(BENCHES)})")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHES)}")
    for name in args.names or list(BENCHES):
        for p in BENCHES[name]():
            print(f"wrote {p.relative_to(ROOT)}", file=sys.stderr)
            print(p.read_text())
    return 0
