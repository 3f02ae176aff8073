"""`python -m eval {run,rescore,compare,fetch-data}`.

`run RECIPE` scores the recipe's trained student (found in the registry at its
model fingerprint) on the recipe's benchmarks and writes `results.json` and
`details.parquet` to `<registry>/results/<model repo>/<model revision>/`.
`rescore DIR` scores a results folder's responses again without generating
(after a scorer fix, or to check a published result); `--out` writes the new
results there. `compare A B` is the paired comparison of two results on the
same problems. `fetch-data [DEST]` downloads the pinned offline benchmark files
(eval/benchmark_data.py) into the shared data folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from data_pipeline.errors import PipelineError, RecipeError, run_command


def results_dir(registry, model_repo: str, revision: str) -> Path:
    return registry.root / "results" / model_repo / revision


def evaluate_model(model_dir: str | Path, revision: str | None, spec, *, limit: int | None = None
                   ) -> tuple[dict, dict[str, list[dict]]]:
    """Score the model in `model_dir` with a recipe's `eval` section (an
    `EvalSpec`): (results record, per-sample details). `run` and
    `python -m community reproduce` both score through here, so a reproduction
    runs exactly what the original eval ran."""
    from data_pipeline.engines import Sampling, get_engine
    from eval.harness import evaluate

    engine = get_engine(spec.engine, str(model_dir), revision=revision, batch_size=spec.batch_size)
    sampling = Sampling(spec.sampling.temperature, spec.sampling.top_p, spec.sampling.max_tokens)
    return evaluate(engine, spec.benchmarks, samples=spec.samples, sampling=sampling, seed=spec.seed,
                    ks=spec.ks, workers=os.cpu_count() or 1, limit=limit)


def run(recipe_path: str, *, registry_root: str | None = None, limit: int | None = None, echo=print) -> Path:
    from data_pipeline.fingerprint import model_fingerprint
    from data_pipeline.pipeline import plan
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins
    from data_pipeline.hub import open_registry
    from eval.harness import write_results

    load_plugins()
    recipe = load_recipe(recipe_path)
    if recipe.spec.eval is None or recipe.spec.sft is None:
        raise RecipeError.one(recipe.path, None, "eval", "this recipe has no `eval` (or no `sft`) section")
    registry = open_registry(registry_root)  # a folder, or hf://<namespace> for the Hub
    dataset_fp = plan(recipe)[-1].fingerprint
    mfp = model_fingerprint(dataset_fp, recipe.spec.sft.model_dump(mode="json"))
    rev = registry.find_fingerprint("models", recipe.model_repo, mfp)
    if rev is None:
        raise PipelineError(f"models/{recipe.model_repo} has no model at fingerprint {mfp[:16]}: "
                            f"train it first (make sft RECIPE={recipe_path})")
    model_dir = registry.snapshot("models", recipe.model_repo, rev)
    results, details = evaluate_model(model_dir, rev, recipe.spec.eval, limit=limit)
    results["recipe"] = {"name": recipe.name, "version": recipe.version, "fingerprint": dataset_fp,
                         "path": os.path.relpath(recipe.path)}
    results["model"] = {"repo": recipe.model_repo, "revision": rev, "fingerprint": mfp}
    out = write_results(results_dir(registry, recipe.model_repo, rev), results, details)
    echo(results_table(results))
    echo(f"\nresults: {out / 'results.json'}")
    return out


def rescore_dir(results_dir: str, *, out: str | None = None, workers: int | None = None, echo=print) -> dict:
    from eval.harness import load_details, load_results, rescore, write_results

    old = load_results(results_dir)
    new, details = rescore(old, load_details(results_dir), workers=workers or os.cpu_count() or 1)
    for bench, rec in new["benchmarks"].items():
        a, b = old["benchmarks"][bench]["metrics"].get("pass@1"), rec["metrics"].get("pass@1")
        same = old["benchmarks"][bench]["metrics"] == rec["metrics"]
        echo(f"{bench}: pass@1 {a:.4f} -> {b:.4f} ({'identical metrics' if same else 'metrics changed'})")
    if out:
        write_results(out, new, details)
        echo(f"rescored results: {Path(out) / 'results.json'}")
    return new


def results_table(results: dict) -> str:
    name = results.get("recipe", {}).get("name", "?")
    lines = ["| recipe | benchmark | problems x samples | pass@1 [95% CI] | pass@k | no answer | truncated |",
             "|---|---|---|---|---|---:|---:|"]
    for bench, r in results["benchmarks"].items():
        m = r["metrics"]
        lo, hi = m["pass@1_ci95"]
        ks = ", ".join(f"{k}={v:.3f}" for k, v in m.items() if k.startswith("pass@") and k[5:].isdigit() and k != "pass@1")
        lines.append(f"| {name} | {bench} | {r['n_problems']} x {results['samples']} | {m['pass@1']:.3f} [{lo:.3f}, {hi:.3f}]"
                     f" | {ks or '-'} | {m['extraction_failure_rate']:.3f} | {m['truncation_rate']:.3f} |")
    return "\n".join(lines)


def compare(a_dir: str, b_dir: str, *, n_boot: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Paired bootstrap (b - a) per benchmark present in both results folders."""
    from eval.harness import load_details

    return compare_details(load_details(a_dir), load_details(b_dir), n_boot=n_boot, seed=seed)


def compare_details(da: dict[str, list[dict]], db: dict[str, list[dict]], *, n_boot: int = 2000, seed: int = 0
                    ) -> dict[str, dict]:
    """Paired bootstrap (b - a) per benchmark present in both sets of per-sample
    details (`eval.harness.load_details`), on the problems both scored."""
    from eval.metrics import paired_bootstrap

    out = {}
    for bench in sorted(set(da) & set(db)):
        def matrix(rows):
            by: dict[str, list[tuple[int, bool]]] = {}
            for r in rows:
                by.setdefault(r["problem_id"], []).append((r["sample_index"], bool(r["correct"])))
            return {p: [c for _, c in sorted(v)] for p, v in by.items()}

        ma, mb = matrix(da[bench]), matrix(db[bench])
        common = sorted(set(ma) & set(mb))
        if not common:
            continue
        a = np.array([ma[p] for p in common], dtype=float)
        b = np.array([mb[p] for p in common], dtype=float)
        out[bench] = {"problems": len(common), **paired_bootstrap(a, b, n_boot=n_boot, seed=seed).to_dict(),
                      "a": float(a.mean()), "b": float(b.mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="score the recipe's trained student")
    r.add_argument("recipe")
    r.add_argument("--registry")
    r.add_argument("--limit", type=int, help="first N problems per benchmark (smoke runs; recorded)")
    rs = sub.add_parser("rescore", help="score a results folder's responses again (no generation)")
    rs.add_argument("results_dir")
    rs.add_argument("--out", help="write the rescored results.json and details.parquet here")
    c = sub.add_parser("compare", help="paired bootstrap of two results folders (B - A)")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--json", action="store_true")
    f = sub.add_parser("fetch-data", help="download the pinned offline benchmark files (eval/benchmark_data.py)")
    f.add_argument("dest", nargs="?", help="the shared data folder (default: $COMMONTHOUGHTS_SHARED_DATA or ../shared/data)")
    f.add_argument("--base-url", help="a mirror with the layout of https://raw.githubusercontent.com (the default)")
    f.add_argument("--force", action="store_true", help="download again even when a file's sha256 is right")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return run_command(lambda: run(args.recipe, registry_root=args.registry, limit=args.limit) and None)
    if args.cmd == "rescore":
        return run_command(lambda: rescore_dir(args.results_dir, out=args.out) and None)
    if args.cmd == "fetch-data":
        from eval.benchmark_data import fetch_command

        return run_command(fetch_command, args.dest, args.base_url, args.force)
    return run_command(print_comparison, args.a, args.b, as_json=args.json)


def print_comparison(a: str, b: str, as_json: bool = False) -> None:
    res = compare(a, b)
    if as_json:
        print(json.dumps(res, indent=2))
    for bench, r in res.items():
        print(f"{bench}: A={r['a']:.3f} B={r['b']:.3f} delta={r['delta']:+.3f} "
              f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] p={r['p_value']:.4f} ({r['problems']} problems)")
