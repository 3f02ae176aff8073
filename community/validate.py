"""`python -m community validate`: what CI checks on every pull request.

1. Every recipe under `recipes/` (except `recipes/accelerate/`, which holds
   accelerate configs, not recipes) resolves and plans: the same checks as
   `python -m data_pipeline validate`, plus: no two recipes share a name and
   version (that pair is a submission's id and a dataset's tag), and no recipe
   is a symbolic link.
2. Every `community/submissions/*.json` matches the submission schema
   (`community/submission.py`), and agrees with the repository:
   - its id is its file name and `<recipe name>-<recipe version>`;
   - the recipe file exists under `recipes/`, and the fingerprints recomputed
     from it now equal the recorded ones (dataset, model, eval section);
   - its track is the recipe's family folder;
   - its parent is the recipe's `extends`, and the parent has a submission;
   - results are rates in [0, 1] with ci_low <= mean <= ci_high, for exactly
     the recipe's benchmarks, with k = the recipe's `eval.samples`;
   - when its details file is present, each benchmark's mean, n and k
     recomputed from it agree with the results, and when the parent's is
     present too, the paired comparison recomputed from both agrees with
     the recorded one.

Validation runs no code from the pull request: YAML is read by
`data_pipeline.yamlio` (safe loader; no python tags, anchors, aliases or
duplicate keys; size-capped), JSON with a size cap, no duplicate keys and no
NaN, and the ops and benchmarks that recipes name are looked up in registries
filled by importing the installed packages (`data_pipeline.registries.load_plugins`),
never a path that a recipe or submission names.

Every problem is printed as `file:line: field: message`; the exit status is 2
when there is any.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.errors import Problem, RecipeError
from community.submission import (
    FILE_FIELD,
    MAX_DETAILS_BYTES,
    SUBMISSIONS_DIR,
    SubmissionError,
    comparison_block,
    details_summary,
    eval_fingerprint,
    json_line,
    load_details_file,
    read_json,
    relative_to_root,
    schema_problems,
    submission_id,
    track_of,
)

SKIPPED_RECIPE_DIRS = ("recipes/accelerate/",)
TOLERANCE = 1e-9


@dataclass
class Loaded:
    rel: str
    recipe: Any = None  # data_pipeline.recipe.Recipe, None when it did not load
    fingerprint: str | None = None


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _field_at_line(path: Path, line: int) -> str:
    """The dotted field path whose key or value starts on `line` of a YAML file,
    from PyYAML's event stream (parsing only: nothing is constructed, so a
    python tag is never resolved and an alias never expanded)."""
    try:
        text = path.read_text(encoding="utf-8")
        stack: list[dict[str, Any]] = []
        found: dict[int, str] = {}

        def here() -> str:
            return ".".join(str(f["key"] if f["kind"] == "map" else f["index"]) for f in stack
                            if (f["kind"] == "map" and f["key"] is not None) or f["kind"] == "seq")

        def advance() -> None:
            if stack:
                top = stack[-1]
                if top["kind"] == "map":
                    top["expect_key"] = True
                else:
                    top["index"] += 1

        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            n = ev.start_mark.line + 1 if ev.start_mark else None
            if isinstance(ev, yaml.ScalarEvent) and stack and stack[-1]["kind"] == "map" and stack[-1]["expect_key"]:
                stack[-1].update(key=ev.value, expect_key=False)
                found.setdefault(n, here())
            elif isinstance(ev, (yaml.ScalarEvent, yaml.AliasEvent)):
                found.setdefault(n, here())
                advance()
            elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                found.setdefault(n, here())
                kind = "map" if isinstance(ev, yaml.MappingStartEvent) else "seq"
                stack.append({"kind": kind, "key": None, "expect_key": True, "index": 0})
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
                advance()
        return found.get(line, "")
    except (yaml.YAMLError, OSError, UnicodeDecodeError, IndexError):
        return ""


def _relative(problems: list[Problem], root: Path) -> list[Problem]:
    """Problems with file paths relative to the repository root, and a field
    found for YAML-level errors (python tags, anchors) from their line."""
    out = []
    for p in problems:
        rel = relative_to_root(Path(p.file), root) if Path(p.file).is_absolute() else None
        fld = p.field
        if not fld and p.line and Path(p.file).suffix in (".yaml", ".yml"):
            fld = _field_at_line(Path(p.file), p.line)
        out.append(Problem(rel or p.file, p.line, fld, p.message))
    return out


def validate_recipes(root: Path, report: Report) -> dict[Path, Loaded]:
    """Load and plan every recipe; returns them by resolved path."""
    from data_pipeline.pipeline import plan
    from data_pipeline.recipe import load_recipe

    recipes_dir = root / "recipes"
    loaded: dict[Path, Loaded] = {}
    if not recipes_dir.is_dir():
        return loaded
    files = sorted(p for p in recipes_dir.rglob("*") if p.suffix in (".yaml", ".yml") and not p.is_dir())
    seen: dict[tuple[str, str], str] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel.startswith(SKIPPED_RECIPE_DIRS):
            continue
        if path.is_symlink() or relative_to_root(path, recipes_dir) is None:
            report.problems.append(Problem(rel, None, FILE_FIELD, "is a symbolic link; recipes must be plain files"))
            continue
        entry = Loaded(rel)
        loaded[path.resolve()] = entry
        try:
            recipe = load_recipe(path)
        except RecipeError as e:
            report.problems += _relative(e.problems, root)
            continue
        try:
            entry.fingerprint = plan(recipe)[-1].fingerprint
        except Exception as e:  # a source that cannot be resolved here (file, Hub revision): report, go on
            report.problems.append(Problem(rel, None, "data", f"cannot compute the fingerprint: {e}"))
            continue
        entry.recipe = recipe
        key = (recipe.name, recipe.version)
        if key in seen:
            line = recipe.where(("name",))[1]
            report.problems.append(Problem(rel, line, "name", f"{recipe.name} {recipe.version} is also the name and "
                                           f"version of {seen[key]} (a submission id and a dataset tag must be unique)"))
        seen.setdefault(key, rel)
        report.ok.append(f"ok  {rel}  {recipe.name} {recipe.version}  fingerprint {entry.fingerprint[:16]}")
    return loaded


class _Checker:
    """The checks of one submission that need the repository; collects problems."""

    def __init__(self, root: Path, path: Path, text: str, record: dict[str, Any]):
        self.root, self.path, self.text, self.rec = root, path, text, record
        self.shown = path.relative_to(root).as_posix()
        self.problems: list[Problem] = []

    def add(self, loc: tuple, message: str) -> None:
        self.problems.append(Problem(self.shown, json_line(self.text, loc), ".".join(map(str, loc)), message))


def _details_of(root: Path, rec: dict[str, Any]) -> Path | None:
    return root / rec["details"] if rec.get("details") else None


def validate_submission(root: Path, path: Path, recipes: dict[Path, Loaded],
                        records: dict[str, dict[str, Any]]) -> list[Problem]:
    """Problems of one submission file (empty when it is valid)."""
    from data_pipeline.fingerprint import model_fingerprint

    shown = path.relative_to(root).as_posix()
    try:
        rec, text = read_json(path, shown)
    except SubmissionError as e:
        return e.problems
    problems = schema_problems(rec, shown, text)
    if problems:
        return problems
    c = _Checker(root, path, text, rec)
    if rec["id"] != path.name[: -len(".json")]:
        c.add(("id",), f"{rec['id']!r} is not the file name's id {path.name[:-5]!r} (submissions are <id>.json)")

    # the recipe, and the fingerprints recomputed from it
    rpath = root / rec["recipe"]["path"]
    rel = relative_to_root(rpath, root / "recipes")
    entry = recipes.get(rpath.resolve())
    if rel is None or rpath.is_symlink():
        c.add(("recipe", "path"), f"{rec['recipe']['path']!r} is not a file under recipes/")
    elif not rpath.is_file():
        c.add(("recipe", "path"), f"recipe {rec['recipe']['path']} not found")
    elif entry is None:
        c.add(("recipe", "path"), f"{rec['recipe']['path']} is not a recipe (recipes/accelerate/ holds accelerate configs)")
    elif entry.recipe is None:
        c.add(("recipe", "path"), f"recipe {rec['recipe']['path']} does not load or plan (its problems are listed above)")
    else:
        r = entry.recipe
        if (rec["recipe"]["name"], rec["recipe"]["version"]) != (r.name, r.version):
            c.add(("recipe", "name"), f"records {rec['recipe']['name']} {rec['recipe']['version']}, but "
                                      f"{entry.rel} is {r.name} {r.version}")
        if rec["id"] != submission_id(r.name, r.version):
            c.add(("id",), f"{rec['id']!r} must be the recipe's <name>-<version>: {submission_id(r.name, r.version)!r}")
        if rec["recipe"]["fingerprint"] != entry.fingerprint:
            c.add(("recipe", "fingerprint"), f"recorded {rec['recipe']['fingerprint'][:16]}..., but {entry.rel} gives "
                                             f"{entry.fingerprint[:16]}... now: the recipe changed after the run, "
                                             "or the record was edited")
        if r.spec.eval is None or r.spec.sft is None:
            c.add(("recipe", "path"), f"{entry.rel} has no `sft` and `eval` sections: nothing to submit")
        else:
            if rec["recipe"]["eval_fingerprint"] != eval_fingerprint(r.spec.eval):
                c.add(("recipe", "eval_fingerprint"), f"the eval section of {entry.rel} is not the one that was run "
                                                      "(it changed after the run, or the record was edited)")
            mfp = model_fingerprint(entry.fingerprint, r.spec.sft.model_dump(mode="json"))
            if rec["model"]["fingerprint"] != mfp:
                c.add(("model", "fingerprint"), f"recorded {rec['model']['fingerprint'][:16]}..., but {entry.rel} "
                                                f"gives {mfp[:16]}... (its `sft` section or its data changed)")
            want = set(r.spec.eval.benchmarks)
            for bench in sorted(set(rec["results"]) - want):
                c.add(("results", bench), f"{bench} is not among the recipe's eval.benchmarks {sorted(want)}")
            for bench in sorted(want - set(rec["results"])):
                c.add(("results",), f"no result for the recipe's benchmark {bench}")
            for bench, res in rec["results"].items():
                if res["k"] != r.spec.eval.samples:
                    c.add(("results", bench, "k"), f"{res['k']} samples per problem, but the recipe's "
                                                   f"eval.samples is {r.spec.eval.samples}")
        track = track_of(rec["recipe"]["path"])
        if rec["track"] != track:
            c.add(("track",), f"{rec['track']!r}, but {rec['recipe']['path']} is on the {track!r} track")
        _check_parent(c, r, recipes, records)

    # the details file, and the comparison recomputed from both details files
    dpath = _details_of(root, rec)
    mine = None
    if dpath is not None:
        mine = _check_details(c, dpath)
    if rec.get("comparison") and rec.get("parent"):
        parent = records.get(rec["parent"]["id"])
        if parent is not None:
            _check_comparison(c, parent, mine)
    return c.problems


def _check_parent(c: _Checker, r, recipes: dict[Path, Loaded], records: dict[str, dict[str, Any]]) -> None:
    rec = c.rec
    if not r.spec.extends:
        if rec["parent"] is not None:
            c.add(("parent",), f"{c.rec['recipe']['path']} extends nothing, so parent must be null")
        return
    expected = relative_to_root(r.chain[1], c.root)
    if rec["parent"] is None:
        c.add(("parent",), f"is null, but {rec['recipe']['path']} extends {expected}")
        return
    ppath = c.root / rec["parent"]["path"]
    if not ppath.is_file():
        c.add(("parent", "path"), f"parent recipe {rec['parent']['path']} not found")
        return
    if rec["parent"]["path"] != expected:
        c.add(("parent", "path"), f"{rec['parent']['path']}, but {rec['recipe']['path']} extends {expected}")
        return
    pentry = recipes.get(ppath.resolve())
    if pentry is not None and pentry.recipe is not None:
        pid = submission_id(pentry.recipe.name, pentry.recipe.version)
        if rec["parent"]["id"] != pid:
            c.add(("parent", "id"), f"{rec['parent']['id']!r}, but the parent recipe is {pid!r}")
            return
    pfile = c.root / SUBMISSIONS_DIR / f"{rec['parent']['id']}.json"
    if not pfile.is_file():
        c.add(("parent", "id"), f"the parent has no submission ({SUBMISSIONS_DIR}/{rec['parent']['id']}.json): "
                                "submit the parent's run first, or propose the change against a parent that has one")


def _check_details(c: _Checker, dpath: Path) -> dict[str, list[dict]] | None:
    rec = c.rec
    if dpath.is_symlink() or not dpath.is_file():
        c.add(("details",), f"{rec['details']} not found (commit it with the submission, or set details to null)")
        return None
    size = dpath.stat().st_size
    if size > MAX_DETAILS_BYTES:
        c.add(("details",), f"{rec['details']} is {size} bytes; details files are limited to {MAX_DETAILS_BYTES}")
        return None
    try:
        details = load_details_file(dpath)
        summary = details_summary(details)
    except Exception as e:  # an unreadable or malformed parquet file from the PR: report it
        c.add(("details",), f"{rec['details']} is not a readable eval details file: {e}")
        return None
    for bench in sorted(set(summary) ^ set(rec["results"])):
        where = "details but not in results" if bench in summary else "results but not in details"
        c.add(("details",), f"benchmark {bench} is in {where}")
    for bench in sorted(set(summary) & set(rec["results"])):
        got, res = summary[bench], rec["results"][bench]
        for key in ("n", "k"):
            if got[key] != res[key]:
                c.add(("results", bench, key), f"{res[key]}, but {rec['details']} has {got[key]}")
        if res["metric"] == "pass@1" and abs(got["mean"] - res["mean"]) > TOLERANCE:
            c.add(("results", bench, "mean"), f"{res['mean']}, but {rec['details']} gives {got['mean']}")
    return details


def _check_comparison(c: _Checker, parent: dict[str, Any], mine: dict[str, list[dict]] | None) -> None:
    rec, cmp = c.rec, c.rec["comparison"]
    for bench, b in cmp["benchmarks"].items():
        res, pres = rec["results"].get(bench), parent["results"].get(bench)
        if res is None or pres is None:
            c.add(("comparison", "benchmarks", bench), "compares a benchmark that this submission or its parent lacks")
            continue
        if b.get("parent_mean") is not None and abs(b["parent_mean"] - pres["mean"]) > TOLERANCE:
            c.add(("comparison", "benchmarks", bench, "parent_mean"),
                  f"{b['parent_mean']}, but the parent's result is {pres['mean']}")
        if b["problems"] == res["n"] == pres["n"] and abs(b["delta"] - (res["mean"] - pres["mean"])) > TOLERANCE:
            c.add(("comparison", "benchmarks", bench, "delta"),
                  f"{b['delta']}, but mean - parent mean = {res['mean'] - pres['mean']}")
    pdetails = _details_of(c.root, parent)
    if mine is None or pdetails is None or not pdetails.is_file() or pdetails.is_symlink():
        return
    try:
        theirs = load_details_file(pdetails)
        again = comparison_block(parent["id"], theirs, {b: mine[b] for b in rec["results"] if b in mine})
    except Exception as e:  # the parent's file is checked (and reported) on its own
        c.add(("comparison",), f"cannot recompute from {parent['details']}: {e}")
        return
    for bench, b in cmp["benchmarks"].items():
        new = (again or {}).get("benchmarks", {}).get(bench)
        if new is None:
            continue
        for key in ("delta", "ci_low", "ci_high", "p_value", "problems"):
            if abs(float(new[key]) - float(b[key])) > TOLERANCE:
                c.add(("comparison", "benchmarks", bench, key),
                      f"{b[key]}, but the paired bootstrap of the two details files gives {new[key]}")


def validate_tree(root: str | Path = ".") -> Report:
    """Validate every recipe and submission under the repository `root`."""
    from data_pipeline.registries import load_plugins

    root = Path(root).resolve()
    load_plugins()
    report = Report()
    recipes = validate_recipes(root, report)
    sub_dir = root / SUBMISSIONS_DIR
    if not sub_dir.is_dir():
        return report
    files = sorted(sub_dir.glob("*.json"))
    # the records that match the schema, by id: parents are looked up here
    records: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            rec, text = read_json(path, path.name)
        except SubmissionError:
            continue
        if not schema_problems(rec, path.name, text):
            records[rec["id"]] = rec
    for path in files:
        problems = validate_submission(root, path, recipes, records)
        report.problems += problems
        if not problems:
            rec = records[path.name[:-5]]
            vs = f" vs {rec['parent']['id']}" if rec["parent"] else ""
            report.ok.append(f"ok  {path.relative_to(root).as_posix()}  {rec['recipe']['name']} "
                             f"{rec['recipe']['version']}{vs}")
    ids = {path.name[: -len(".json")] for path in files}
    for stray in sorted(p for p in sub_dir.iterdir() if p.name.endswith(".parquet")):
        if stray.name[: -len(".details.parquet")] not in ids or not stray.name.endswith(".details.parquet"):
            report.problems.append(Problem(stray.relative_to(root).as_posix(), None, FILE_FIELD,
                                           "no submission refers to this file (details files are "
                                           "<id>.details.parquet next to <id>.json)"))
    return report


def main(root: str | Path = ".", *, out=None, err=None) -> int:
    """Print the report (ok lines to `out`, problems to `err`; default stdout
    and stderr at call time); 2 when there is any problem, else 0."""
    out, err = out or sys.stdout, err or sys.stderr
    report = validate_tree(root)
    for line in report.ok:
        print(line, file=out)
    for p in report.problems:
        print(str(p), file=err)
    if report.problems:
        print(f"\n{len(report.problems)} problem(s)", file=err)
        return 2
    return 0
