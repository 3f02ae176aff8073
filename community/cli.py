"""`python -m community {submit,validate,leaderboard,reproduce,schema}`.

- `submit RECIPE`: write `community/submissions/<name>-<version>.json` (and a
  copy of the eval's per-sample details) from a finished run of RECIPE in the
  registry (`make eval RECIPE=...` first; `--registry`: a folder or hf://...). Contributors come from
  `--contributor "Name (Institution)"` (repeatable), else the environment
  variable `COMMONTHOUGHTS_CONTRIBUTOR` (several separated by ";"), else git's
  `user.name`.
- `validate`: every recipe and every submission, as CI does on a pull request;
  runs no code from the tree it checks. Exit status 2 with every problem as
  `file:line: field: message`.
- `leaderboard`: `community/LEADERBOARD.md` and `site/index.html` from the
  submissions (`community.leaderboard`; its arguments are passed through).
- `reproduce SUBMISSION`: fetch the dataset and model by revision, check their
  fingerprints, rerun the eval (`--sft`: retrain first) and print a verdict per
  benchmark. Exit status 0 when every benchmark reproduced, 1 otherwise.
- `schema`: print the submission JSON Schema (`community/submission.schema.json`).

Every command takes `--root` (the repository root; default: the working directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_pipeline.errors import PipelineError, RecipeError


def _report(fn) -> int:
    """Exit statuses as elsewhere: 2 for a bad recipe or submission (every
    problem on stderr), 1 for a run that is missing or failed."""
    from community.submission import SubmissionError

    try:
        return int(fn() or 0)
    except (RecipeError, SubmissionError) as e:
        print(str(e), file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_submit(args) -> int:
    from data_pipeline.hub import open_registry
    from community.submission import build_submission, default_contributors, parse_contributor, write_submission

    root = Path(args.root).resolve()
    try:
        people = [parse_contributor(c) for c in args.contributor] or default_contributors(root)
    except ValueError as e:
        raise PipelineError(str(e)) from None
    if not people:
        raise PipelineError('no contributor: pass --contributor "Name (Institution)" (repeatable), or set '
                            "COMMONTHOUGHTS_CONTRIBUTOR or git's user.name")
    registry = open_registry(args.registry)
    record, details = build_submission(args.recipe, root=root, registry=registry, contributors=people,
                                       date=args.date, with_details=not args.no_details)
    out = write_submission(record, root, details, force=args.force)
    print(f"wrote {out.relative_to(root).as_posix()}" + (f" and {record['details']}" if record["details"] else ""))
    for bench, r in record["results"].items():
        line = f"  {bench}: {r['metric']} {r['mean']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] (n={r['n']}, k={r['k']})"
        cmp = (record.get("comparison") or {}).get("benchmarks", {}).get(bench)
        if cmp:
            line += (f"; vs {record['comparison']['parent']}: {cmp['delta']:+.4f} [{cmp['ci_low']:+.4f}, "
                     f"{cmp['ci_high']:+.4f}], p = {cmp['p_value']:.3g}"
                     + (" (significant)" if cmp["significant"] else ""))
        print(line)
    print("next: `make validate`, then commit the recipe and these files (CONTRIBUTING.md)")
    return 0


def cmd_validate(args) -> int:
    from community.validate import main as validate_main

    return validate_main(args.root)


def cmd_reproduce(args) -> int:
    from community.reproduce import reproduce

    return reproduce(args.submission, root=args.root, registry_root=args.registry, hub=args.hub, sft=args.sft,
                     out=args.out)


def cmd_schema(args) -> int:
    from community.submission import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["leaderboard"]:
        # Written by community/leaderboard.py; imported here so the other commands work without it.
        from community.leaderboard import main as leaderboard_main

        return leaderboard_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m community", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--root", default=".", help="the repository root (default: the working directory)")
        return p

    s = command("submit", "write a submission record from a finished run of a recipe")
    s.add_argument("recipe")
    s.add_argument("--registry", help="where the run was published: a local registry folder or hf://[namespace] "
                                      "(default: $COMMONTHOUGHTS_REGISTRY, else ./registry)")
    s.add_argument("--contributor", action="append", default=[], metavar='"NAME (INSTITUTION)"',
                   help="a contributor and their institution (repeatable)")
    s.add_argument("--date", help="the submission date, YYYY-MM-DD (default: today, UTC)")
    s.add_argument("--no-details", action="store_true",
                   help="do not copy the per-sample eval details (the leaderboard then has no paired comparison "
                        "against this run for its children)")
    s.add_argument("--force", action="store_true", help="replace an existing submission of this recipe version")
    command("validate", "check every recipe and submission (what CI runs on a pull request)")
    sub.add_parser("leaderboard", help="write community/LEADERBOARD.md and site/index.html", add_help=False)
    r = command("reproduce", "rerun a submission's eval from its published artifacts; a verdict per benchmark")
    r.add_argument("submission", help="community/submissions/<id>.json")
    r.add_argument("--registry", help="the local registry holding the submission's dataset and model "
                                      "(default: $COMMONTHOUGHTS_REGISTRY, else ./registry)")
    r.add_argument("--hub", action="store_true", help="fetch the dataset and model from the Hugging Face Hub "
                                                      "(the default when the submission's registry is `hub`)")
    r.add_argument("--sft", action="store_true", help="train the student again before scoring it")
    r.add_argument("--out", help="write the rerun's results.json and details.parquet here")
    command("schema", "print the submission JSON Schema")
    args = ap.parse_args(argv)
    fn = {"submit": cmd_submit, "validate": cmd_validate, "reproduce": cmd_reproduce, "schema": cmd_schema}[args.cmd]
    return _report(lambda: fn(args))
