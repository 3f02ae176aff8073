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
    from data_pipeline.pipeline import plan

    recipe = _load(args.recipe)
    stages = plan(recipe)
    doc = {"recipe": recipe.raw, "chain": [str(p) for p in recipe.chain],
           "stages": [s.describe() for s in stages], "fingerprint": stages[-1].fingerprint}
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(yaml.safe_dump({"recipe": recipe.raw}, sort_keys=False), end="")
    print(f"\nstage graph of {recipe.name} {recipe.version} (fingerprint {doc['fingerprint']}):")
    for i, s in enumerate(stages):
        arrow = "sources" if i == 0 else stages[i - 1].id
        print(f"  {arrow:>14} -> {s.id:<14} op={s.op.name:<14} v{s.op.version}  {s.fingerprint[:16]}")
    return 0


def cmd_run(args) -> int:
    from data_pipeline.cache import StageCache
    from data_pipeline.pipeline import funnel_table, run_data
    from data_pipeline.publish import publish_dataset
    from data_pipeline.registry import LocalRegistry

    recipe = _load(args.recipe)
    t0 = time.time()
    cache = StageCache(Path(args.cache) if args.cache else None)
    result = run_data(recipe, cache, tasks=args.tasks, workers=args.workers)
    print(f"\nstage funnel of {recipe.name} {recipe.version} ({time.time() - t0:.1f}s):\n")
    print(funnel_table(result))
    if not args.no_publish:
        registry = LocalRegistry(Path(args.registry) if args.registry else None)
        repo, commit = publish_dataset(recipe, result, cache, registry)
        print(f"\npublished datasets/{repo} @ {commit[:12]} (tags v{recipe.version}, fingerprint {result.fingerprint[:16]})")
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(result.funnel(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_pipeline", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="resolve and check recipes (runs no code from them)")
    v.add_argument("recipes", nargs="+")
    p = sub.add_parser("plan", help="print the resolved recipe and its stage graph")
    p.add_argument("recipe")
    p.add_argument("--json", action="store_true")
    r = sub.add_parser("run", help="run the data stages and publish the dataset")
    r.add_argument("recipe")
    r.add_argument("--tasks", type=int)
    r.add_argument("--workers", type=int)
    r.add_argument("--cache")
    r.add_argument("--registry")
    r.add_argument("--no-publish", action="store_true")
    r.add_argument("--stats-json")
    args = ap.parse_args(argv)
    return run_command({"validate": cmd_validate, "plan": cmd_plan, "run": cmd_run}[args.cmd], args)
