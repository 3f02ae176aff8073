"""`python -m data_pipeline {validate,plan,run}`.

Exit status 2 for a bad recipe (every problem printed as file:line: field:
message, nothing written), 1 for a failed run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from data_pipeline.errors import RecipeError, run_command


def _load(path: str):
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins

    load_plugins()
    return load_recipe(path)


def cmd_validate(args) -> int:
    from data_pipeline.pipeline import plan

    status = 0
    for p in args.recipes:
        try:
            recipe = _load(p)
            fp = plan(recipe)[-1].fingerprint
            print(f"ok  {p}  {recipe.name} {recipe.version}  fingerprint {fp[:16]}")
        except RecipeError as e:
            print(str(e), file=sys.stderr)
            status = 2
    return status


def cmd_plan(args) -> int:
    from data_pipeline.estimate import estimate, format_estimate
    from data_pipeline.pipeline import plan

    recipe = _load(args.recipe)
    stages = plan(recipe)
    est = estimate(recipe, args.profile)
    doc = {"recipe": recipe.raw, "chain": [str(p) for p in recipe.chain],
           "stages": [s.describe() for s in stages], "fingerprint": stages[-1].fingerprint,
           "estimate": est.to_dict()}
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(yaml.safe_dump({"recipe": recipe.raw}, sort_keys=False), end="")
    print(f"\nstage graph of {recipe.name} {recipe.version} (fingerprint {doc['fingerprint']}), expected rows:")
    for i, (s, e) in enumerate(zip(stages, est.stages)):
        arrow = "sources" if i == 0 else stages[i - 1].id
        rows = f"{e.rows_out:>12,.0f}" if e.rows_in is None else f"{e.rows_in:>12,.0f} -> {e.rows_out:>12,.0f}"
        print(f"  {arrow:>14} -> {s.id:<14} op={s.op.name:<14} v{s.op.version}  {s.fingerprint[:16]}  {rows:>28}")
    print("\n" + format_estimate(est))
    return 0


def cmd_run(args) -> int:
    from data_pipeline.cache import StageCache
    from data_pipeline.pipeline import funnel_table, run_data
    from data_pipeline.hub import open_registry
    from data_pipeline.publish import publish_dataset

    recipe = _load(args.recipe)
    t0 = time.time()
    cache = StageCache(Path(args.cache) if args.cache else None)
    executor = args.executor or recipe.spec.data.execution.executor
    if args.dry_run and executor != "slurm":
        raise RecipeError.one(recipe.path, None, "data.execution.executor",
                              f"--dry-run writes Slurm job scripts; the executor here is {executor!r} (add --executor slurm)")
    if executor == "slurm":
        from data_pipeline.executors import submit_slurm

        sub = submit_slurm(recipe, cache, tasks=args.tasks, workers=args.workers, dry_run=args.dry_run)
        for j in sub.jobs:
            print(f"{j.job_id:>12}  {j.kind:<11} {j.name}  {' '.join(j.args)}")
        what = "wrote (nothing submitted)" if sub.dry_run else "submitted; the record is in"
        print(f"\n{len(sub.jobs)} Slurm jobs {what} {sub.folder} (submit.sh, jobs.json, one .sbatch per job); "
              f"stages in the cache: {', '.join(sub.cached) or 'none'}")
        if sub.dry_run or sub.jobs:
            if sub.jobs:
                print(("to submit: bash submit.sh there, or this command without --dry-run; " if sub.dry_run else "")
                      + "when the last job has finished, run this command again: with every stage in the cache "
                      "it publishes the dataset")
            return 0
        executor = "local"  # every stage is in the cache: read it and publish
    result = run_data(recipe, cache, tasks=args.tasks, workers=args.workers, executor=executor)
    print(f"\nstage funnel of {recipe.name} {recipe.version} ({time.time() - t0:.1f}s):\n")
    print(funnel_table(result))
    if not args.no_publish:
        registry = open_registry(args.registry)
        repo, commit = publish_dataset(recipe, result, cache, registry)
        where = f"{registry.description} " if hasattr(registry, "repo_id") else ""
        shown = registry.repo_id(repo) if hasattr(registry, "repo_id") else repo
        print(f"\npublished {where}datasets/{shown} @ {commit[:12]} (tags v{recipe.version}, "
              f"fingerprint {result.fingerprint[:16]})")
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(result.funnel(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_pipeline", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="resolve and check recipes (runs no code from them)")
    v.add_argument("recipes", nargs="+")
    p = sub.add_parser("plan", help="print the resolved recipe, its stage graph and its cost estimate (docs/plan.md)")
    p.add_argument("recipe")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", action="append", metavar="NAME_OR_FILE",
                   help="throughput and expectation figures over the recipe's own (a shipped profile name such as "
                        "`nano`, or a .yaml file); repeatable, the last one wins")
    r = sub.add_parser("run", help="run the data stages and publish the dataset")
    r.add_argument("recipe")
    r.add_argument("--tasks", type=int)
    r.add_argument("--workers", type=int)
    r.add_argument("--cache")
    r.add_argument("--registry", help="a registry folder (default: $COMMONTHOUGHTS_REGISTRY or ./registry), or "
                   "hf:// / hf://<namespace> for the Hugging Face Hub (token: $HF_TOKEN; docs/hub.md)")
    r.add_argument("--no-publish", action="store_true")
    r.add_argument("--stats-json")
    r.add_argument("--executor", choices=["local", "ray", "slurm"],
                   help="override data.execution.executor (slurm submits the stages as chained jobs and returns)")
    r.add_argument("--dry-run", action="store_true",
                   help="with --executor slurm: write the sbatch scripts and submit.sh, submit nothing")
    args = ap.parse_args(argv)
    return run_command({"validate": cmd_validate, "plan": cmd_plan, "run": cmd_run}[args.cmd], args)
