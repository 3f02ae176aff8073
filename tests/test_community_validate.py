"""`python -m community validate`: what CI checks on a pull request.

The submissions here are built without training: the JSON is made from the
recipes' planned fingerprints and a synthetic per-sample details file, so every
test runs in seconds. A valid tree must pass (so the rejections below are the
checks', not a broken fixture's), and each kind of tampering must be rejected
with a `file:line: field: message` line naming the file and the field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from community_recipes import BASE, CHILD
from community.submission import SUBMISSIONS_DIR, comparison_block, eval_fingerprint, json_schema, load_details_file
from community.validate import validate_tree
from data_pipeline.errors import Problem

ROOT = Path(__file__).resolve().parents[1]


BOMB = """\
name: bomb
version: 1.0.0
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def _details(path: Path, matrix: np.ndarray, bench: str = "nano-bench") -> None:
    from eval.harness import DETAILS_SCHEMA

    rows = [{"benchmark": bench, "problem_id": f"p{i:03d}", "sample_index": j, "seed": 0, "prompt": "q", "gold": "1",
             "response": "r", "extracted": "1", "correct": bool(v), "score_status": "ok", "finish_reason": "stop",
             "prompt_tokens": 1, "completion_tokens": 1, "error": None}
            for i, row in enumerate(matrix) for j, v in enumerate(row)]
    pq.write_table(pa.Table.from_pylist(rows, schema=DETAILS_SCHEMA), path)


def make_submission(root: Path, rel: str, matrix: np.ndarray, parent: tuple[str, str] | None = None) -> dict:
    """A submission of the recipe at `rel` whose results are `matrix`
    [problems x samples] of verdicts, with its details file, written under root."""
    from data_pipeline.fingerprint import model_fingerprint
    from data_pipeline.pipeline import plan
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins

    load_plugins()
    recipe = load_recipe(root / rel)
    fp = plan(recipe)[-1].fingerprint
    sid = f"{recipe.name}-{recipe.version}"
    details = f"{SUBMISSIONS_DIR}/{sid}.details.parquet"
    (root / SUBMISSIONS_DIR).mkdir(parents=True, exist_ok=True)
    _details(root / details, matrix)
    mean = float(matrix.mean(axis=1).mean())
    record = {
        "schema_version": 1,
        "id": sid,
        "track": "nano",
        "recipe": {"path": rel, "name": recipe.name, "version": recipe.version, "fingerprint": fp,
                   "eval_fingerprint": eval_fingerprint(recipe.spec.eval)},
        "parent": None,
        "dataset": {"repo": f"local/{recipe.name}", "revision": "a" * 40, "rows": 40, "registry": "local"},
        "model": {"repo": f"local/{recipe.name}", "revision": "b" * 40,
                  "fingerprint": model_fingerprint(fp, recipe.spec.sft.model_dump(mode="json")),
                  "base_model": "nano-2m (made from a config, seed 0)"},
        "results": {"nano-bench": {"metric": "pass@1", "mean": mean, "ci_low": max(0.0, mean - 0.1),
                                   "ci_high": min(1.0, mean + 0.1), "n": matrix.shape[0], "k": matrix.shape[1]}},
        "comparison": None,
        "harness_version": "0.2.0",
        "hardware": {"device": "cpu", "cpus": 2},
        "compute": {"device_hours": 0.01, "devices": 1, "device_type": "cpu", "sft_wall_time_s": 36.0,
                    "sft_tokens": 1000, "teacher_tokens": 5000},
        "contributors": [{"name": "Ada Lovelace", "institution": "Analytical Engines Ltd"}],
        "date": "2026-11-26",
        "details": details,
    }
    if parent:
        pid, prel = parent
        record["parent"] = {"path": prel, "id": pid}
        record["comparison"] = comparison_block(pid, load_details_file(root / f"{SUBMISSIONS_DIR}/{pid}.details.parquet"),
                                                load_details_file(root / details))
    write(root, record)
    return record


def write(root: Path, record: dict) -> Path:
    path = root / SUBMISSIONS_DIR / f"{record['id']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A repository with a base recipe, an ablation and both submissions."""
    root = tmp_path / "repo"
    (root / "recipes/nano").mkdir(parents=True)
    (root / "recipes/nano/base.yaml").write_text(BASE)
    (root / "recipes/nano/child.yaml").write_text(CHILD)
    rng = np.random.default_rng(0)
    make_submission(root, "recipes/nano/base.yaml", (rng.random((50, 2)) < 0.4).astype(float))
    make_submission(root, "recipes/nano/child.yaml", (rng.random((50, 2)) < 0.5).astype(float),
                    parent=("nano-base-1.0.0", "recipes/nano/base.yaml"))
    return root


CHILD_JSON = f"{SUBMISSIONS_DIR}/nano-child-1.0.0.json"


def load(root: Path, sid: str = "nano-child-1.0.0") -> dict:
    return json.loads((root / SUBMISSIONS_DIR / f"{sid}.json").read_text())


def problems_of(root: Path) -> list[Problem]:
    return validate_tree(root).problems


def only(problems: list[Problem], file: str, field: str) -> Problem:
    """The problem reported for `file` and `field` (there must be one)."""
    hits = [p for p in problems if p.file == file and p.field == field]
    assert hits, f"no problem for {file} {field}; got:\n" + "\n".join(map(str, problems))
    return hits[0]


def test_a_valid_tree_passes(tree: Path):
    report = validate_tree(tree)
    assert report.problems == []
    assert any(line.startswith("ok  recipes/nano/child.yaml  nano-child 1.0.0") for line in report.ok)
    assert f"ok  {CHILD_JSON}  nano-child 1.0.0 vs nano-base-1.0.0" in report.ok


def test_the_repository_itself_validates():
    """`make validate` on this checkout: every recipe (and submission, if any)."""
    report = validate_tree(ROOT)
    assert report.problems == [], "\n".join(map(str, report.problems))
    assert any("recipes/nano/base.yaml" in line for line in report.ok)
    assert not any("recipes/accelerate/" in line for line in report.ok)


def test_tampered_fingerprint_in_the_record(tree: Path):
    rec = load(tree)
    rec["recipe"]["fingerprint"] = "0" * 64
    write(tree, rec)
    p = only(problems_of(tree), CHILD_JSON, "recipe.fingerprint")
    assert "recorded 0000000000000000..." in p.message and "record was edited" in p.message
    assert p.line == json.dumps(rec, indent=2).splitlines().index('    "fingerprint": "' + "0" * 64 + '",') + 1


def test_recipe_changed_after_the_run(tree: Path):
    """The recipe file edited after its submission: the recorded fingerprints no longer match."""
    child = tree / "recipes/nano/child.yaml"
    child.write_text(CHILD.replace("keep: all", "keep: correct"))
    problems = problems_of(tree)
    assert "the recipe changed after the run" in only(problems, CHILD_JSON, "recipe.fingerprint").message
    assert "changed" in only(problems, CHILD_JSON, "model.fingerprint").message
    # the eval section is fingerprinted too (the data fingerprint does not cover it)
    child.write_text(CHILD + "eval: {samples: 2, seed: 7}\n")
    assert "not the one that was run" in only(problems_of(tree), CHILD_JSON, "recipe.eval_fingerprint").message


def test_missing_parent_submission(tree: Path):
    (tree / SUBMISSIONS_DIR / "nano-base-1.0.0.json").unlink()
    (tree / SUBMISSIONS_DIR / "nano-base-1.0.0.details.parquet").unlink()
    p = only(problems_of(tree), CHILD_JSON, "parent.id")
    assert "the parent has no submission (community/submissions/nano-base-1.0.0.json)" in p.message


def test_missing_parent_recipe(tree: Path):
    (tree / "recipes/nano/base.yaml").unlink()
    problems = problems_of(tree)
    p = only(problems, "recipes/nano/child.yaml", "extends")
    assert p.line == 2 and "parent recipe 'base.yaml' not found" in p.message
    assert "does not load" in only(problems, CHILD_JSON, "recipe.path").message
    assert "not found" in only(problems, f"{SUBMISSIONS_DIR}/nano-base-1.0.0.json", "recipe.path").message


def test_parent_that_is_not_the_recipes_extends(tree: Path):
    rec = load(tree)
    rec["parent"] = None
    rec["comparison"] = None
    write(tree, rec)
    assert "extends recipes/nano/base.yaml" in only(problems_of(tree), CHILD_JSON, "parent").message


@pytest.mark.parametrize("field,value", [("mean", 1.3), ("ci_low", -0.2), ("ci_high", 1.05)])
def test_result_outside_the_unit_interval(tree: Path, field: str, value: float):
    rec = load(tree)
    rec["results"]["nano-bench"][field] = value
    write(tree, rec)
    p = only(problems_of(tree), CHILD_JSON, f"results.nano-bench.{field}")
    assert f"{value} is outside [0, 1]" in p.message
    assert p.line is not None


def test_interval_that_does_not_hold_the_mean(tree: Path):
    rec = load(tree)
    r = rec["results"]["nano-bench"]
    r["ci_low"], r["ci_high"] = r["mean"] + 0.01, r["mean"] + 0.05
    write(tree, rec)
    p = only(problems_of(tree), CHILD_JSON, "results.nano-bench")
    assert "does not contain the mean" in p.message


def test_schema_violations(tree: Path):
    rec = load(tree)
    del rec["harness_version"]
    rec["results"]["nano-bench"]["n"] = "fifty"
    rec["dataset"]["revision"] = "main"  # a branch is not a pinned revision
    rec["contributors"] = []
    rec["surprise"] = 1
    write(tree, rec)
    problems = problems_of(tree)
    assert only(problems, CHILD_JSON, "harness_version").message == "required field is missing"
    assert "integer" in only(problems, CHILD_JSON, "results.nano-bench.n").message
    assert only(problems, CHILD_JSON, "dataset.revision").message == \
        "invalid value 'main' (expected a commit: 40 (or 64) lowercase hex digits, not a branch or tag)"
    assert "at least 1" in only(problems, CHILD_JSON, "contributors").message
    assert only(problems, CHILD_JSON, "surprise").message == "unknown field"


def test_schema_version_and_malformed_json(tree: Path):
    rec = load(tree)
    rec["schema_version"] = 2
    write(tree, rec)
    assert "not a schema version this validator reads" in only(problems_of(tree), CHILD_JSON, "schema_version").message
    path = tree / CHILD_JSON
    path.write_text('{"id": "x", "id": "y"}')
    assert "duplicate key 'id'" in only(problems_of(tree), CHILD_JSON, "<file>").message
    path.write_text('{"schema_version": 1, "mean": NaN}')
    assert "NaN is not a number" in only(problems_of(tree), CHILD_JSON, "<file>").message
    path.write_text('{"schema_version": 1,\n "id": }')
    assert only(problems_of(tree), CHILD_JSON, "<file>").line == 2
    path.write_text(" " * (1 << 20) + "{}")
    assert "limited to" in only(problems_of(tree), CHILD_JSON, "<file>").message


def test_id_must_be_the_file_name(tree: Path):
    rec = load(tree)
    (tree / CHILD_JSON).rename(tree / SUBMISSIONS_DIR / "other.json")
    problems = problems_of(tree)
    assert "is not the file name's id 'other'" in only(problems, f"{SUBMISSIONS_DIR}/other.json", "id").message
    assert rec["id"] == "nano-child-1.0.0"


def test_yaml_python_tag_in_a_recipe(tree: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    (tree / "recipes/nano/evil.yaml").write_text(
        f'extends: base.yaml\nname: evil\nversion: 1.0.0\ndescription: !!python/object/apply:os.system ["touch {marker}"]\n')
    p = only(problems_of(tree), "recipes/nano/evil.yaml", "description")
    assert p.line == 4 and "tag" in p.message and "plain data" in p.message
    assert not marker.exists()


def test_alias_bomb_in_a_recipe(tree: Path):
    (tree / "recipes/nano/bomb.yaml").write_text(BOMB)
    p = only(problems_of(tree), "recipes/nano/bomb.yaml", "a")
    assert p.line == 3 and "anchors and aliases are not allowed" in p.message


def test_results_must_agree_with_the_details_file(tree: Path):
    rec = load(tree)
    r = rec["results"]["nano-bench"]
    r["mean"] = round(r["mean"] + 0.02, 6)
    r["n"] = 49
    write(tree, rec)
    problems = problems_of(tree)
    assert "but community/submissions/nano-child-1.0.0.details.parquet gives" in \
        only(problems, CHILD_JSON, "results.nano-bench.mean").message
    assert "49, but" in only(problems, CHILD_JSON, "results.nano-bench.n").message
    # and a missing details file is named
    (tree / rec["details"]).unlink()
    assert "not found" in only(problems_of(tree), CHILD_JSON, "details").message


def test_comparison_must_agree_with_both_details_files(tree: Path):
    rec = load(tree)
    b = rec["comparison"]["benchmarks"]["nano-bench"]
    b["p_value"] = 0.5 if b["p_value"] != 0.5 else 0.4
    write(tree, rec)
    p = only(problems_of(tree), CHILD_JSON, "comparison.benchmarks.nano-bench.p_value")
    assert "paired bootstrap of the two details files gives" in p.message
    b["delta"] += 0.01
    write(tree, rec)
    assert "mean - parent mean" in only(problems_of(tree), CHILD_JSON, "comparison.benchmarks.nano-bench.delta").message


def test_stray_details_file_and_duplicate_recipe_names(tree: Path):
    (tree / SUBMISSIONS_DIR / "lost.details.parquet").write_bytes(b"PAR1")
    (tree / "recipes/nano/copy.yaml").write_text(BASE)
    problems = problems_of(tree)
    assert "no submission refers to this file" in only(problems, f"{SUBMISSIONS_DIR}/lost.details.parquet", "<file>").message
    assert "also the name and version of recipes/nano/base.yaml" in only(problems, "recipes/nano/copy.yaml", "name").message


def test_cli_exit_status_and_no_code_from_the_tree(tree: Path, tmp_path: Path):
    """The module entry point, from a neutral working directory: status 2, one
    `file:line: field: message` line per problem; packages planted in the tree
    (`curation/`, `eval/`) are never imported."""
    marker = tmp_path / "imported"
    for pkg in ("curation", "eval", "community"):
        (tree / pkg).mkdir(exist_ok=True)
        (tree / pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('{pkg}')\n")
    rec = load(tree)
    rec["results"]["nano-bench"]["mean"] = 1.5
    write(tree, rec)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-m", "community", "validate", "--root", str(tree)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    line = next(ln for ln in p.stderr.splitlines() if "results.nano-bench.mean" in ln)
    assert line.startswith(f"{CHILD_JSON}:") and ": results.nano-bench.mean: 1.5 is outside [0, 1]" in line
    assert "ok  recipes/nano/base.yaml" in p.stdout
    assert not marker.exists()


def test_json_schema_file_is_in_sync():
    """community/submission.schema.json is generated: `python -m community schema > community/submission.schema.json`."""
    on_disk = json.loads((ROOT / "community/submission.schema.json").read_text())
    assert on_disk == json_schema()
    assert on_disk["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert on_disk["properties"]["schema_version"] == {"const": 1, "title": "Schema Version", "type": "integer"}
