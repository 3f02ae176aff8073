"""Recipe loading, `extends` merging, and the malformed-recipe corpus."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.cli import main as cli_main
from data_pipeline.errors import RecipeError
from data_pipeline.recipe import load_recipe, merge
from data_pipeline.registries import load_plugins

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "recipes" / "bad").glob("*.yaml"))

load_plugins()


def _expectations(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"# expect-(field|line|error):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def test_corpus_is_large_enough():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_recipe_fails_with_its_error_and_writes_nothing(path: Path, tmp_path: Path, capsys):
    exp = _expectations(path)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    match = [p for p in problems if exp["error"] in p.message]
    assert match, f"expected {exp['error']!r} in {[str(p) for p in problems]}"
    p = match[0]
    assert p.field == exp["field"], str(p)
    if "line" in exp:
        assert p.line == int(exp["line"]), str(p)
    assert Path(p.file).name in {path.name, "cycle_a.yaml", "cycle_b.yaml"}

    # Through the CLI: status 2, the error names file and line, nothing written.
    cache, registry = tmp_path / "cache", tmp_path / "registry"
    status = cli_main(["run", str(path), "--cache", str(cache), "--registry", str(registry)])
    err = capsys.readouterr().err
    assert status == 2
    assert path.name in err or "cycle" in err
    assert not cache.exists() and not registry.exists()


def test_python_tag_runs_no_code(tmp_path: Path):
    marker = Path("/tmp/pwned-by-recipe")
    marker.unlink(missing_ok=True)
    p = subprocess.run([sys.executable, "-m", "data_pipeline", "validate", str(ROOT / "tests/recipes/bad/python_tag.yaml")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert "python_tag.yaml:6" in p.stderr
    assert not marker.exists()


def test_merge_rule():
    parent = {"a": {"x": 1, "y": [1, 2], "z": {"k": 1}}, "b": 2, "stages": {"s1": {"p": 1}, "s2": {"p": 2}}}
    child = {"a": {"y": [3], "z": None}, "stages": {"s1": {"p": 9}, "s3": {"p": 3}, "s2": None}}
    out = merge(parent, child)
    assert out == {"a": {"x": 1, "y": [3]}, "b": 2, "stages": {"s1": {"p": 9}, "s3": {"p": 3}}}
    assert list(out["stages"]) == ["s1", "s3"]  # parent order kept, additions appended


def test_nano_recipes_resolve():
    base = load_recipe(ROOT / "recipes/nano/base.yaml")
    nov = load_recipe(ROOT / "recipes/nano/no-verify.yaml")
    weak = load_recipe(ROOT / "recipes/nano/weak-teacher.yaml")
    assert [s.id for s in base.stages] == [s.id for s in nov.stages] == [s.id for s in weak.stages]
    assert nov.raw["data"]["stages"]["verify"] == {"keep": "all"}
    assert weak.raw["data"]["stages"]["distill"]["model"] == "nano-weak"
    assert weak.raw["data"]["stages"]["distill"]["samples"] == base.raw["data"]["stages"]["distill"]["samples"]
    assert nov.dataset_repo == "local/nano-no-verify" and nov.chain[1].name == "base.yaml"
    # an error in a child points at the child's line, one inherited at the parent's
    assert nov.where(("data", "stages", "verify", "keep"))[0].endswith("no-verify.yaml")
    assert nov.where(("data", "stages", "distill", "model"))[0].endswith("base.yaml")


def test_fingerprints_follow_the_change(tmp_path: Path):
    from data_pipeline.pipeline import plan

    base = plan(load_recipe(ROOT / "recipes/nano/base.yaml"))
    nov = plan(load_recipe(ROOT / "recipes/nano/no-verify.yaml"))
    same = [a.fingerprint == b.fingerprint for a, b in zip(base, nov)]
    ids = [s.id for s in base]
    # everything before verify is shared (the teacher's answers are reused), verify and after differ
    assert same == [i < ids.index("verify") for i in range(len(ids))]
    # renaming a stage changes no fingerprint; a no-op parameter spelled out changes none either
    text = (ROOT / "recipes/nano/base.yaml").read_text()
    (tmp_path / "recipes").mkdir()
    renamed = tmp_path / "recipes" / "r.yaml"
    renamed.write_text(text.replace("    dedup: {method: exact}", "    exact_dedup: {op: dedup, method: exact, field: problem}"))
    assert plan(load_recipe(renamed))[-1].fingerprint == base[-1].fingerprint


def test_every_shipped_recipe_validates(capsys):
    recipes = sorted(str(p) for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
    assert recipes and cli_main(["validate", *recipes]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == len(recipes)
