"""`python -m data_pipeline plan`'s cost estimate (data_pipeline/estimate.py, docs/plan.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from data_pipeline.cli import main as cli_main
from data_pipeline.errors import RecipeError
from data_pipeline.estimate import estimate, load_profile
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins

ROOT = Path(__file__).resolve().parents[1]
NANO = ROOT / "recipes/nano"
REAL = sorted(p for d in ("math", "code", "science") for p in (ROOT / "recipes" / d).glob("*.yaml"))

load_plugins()


def _est(path: Path, *profiles: str):
    return estimate(load_recipe(path), list(profiles))


def _by_id(est) -> dict:
    return {s.id: s for s in est.stages}


def _copy_recipe(tmp: Path, src: Path, edit=None, name: str | None = None) -> Path:
    """A copy of a real recipe in a recipes/ tree of its own (so `extends` and the
    accelerate path resolve)."""
    root = tmp / "recipes"
    for d in ("math", "code", "science", "accelerate"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "recipes/accelerate").glob("*.yaml"):
        (root / "accelerate" / f.name).write_text(f.read_text())
    text = src.read_text()
    out = root / src.parent.name / (name or src.name)
    out.write_text(edit(text) if edit else text)
    return out


def test_there_are_real_recipes_with_ablations():
    for domain in ("math", "code", "science"):
        files = sorted(p.name for p in (ROOT / "recipes" / domain).glob("*.yaml"))
        assert "base.yaml" in files and len(files) >= 2, domain
        for f in files:
            if f != "base.yaml":
                assert load_recipe(ROOT / "recipes" / domain / f).spec.extends == "base.yaml"


# --------------------------------------------------------------------------- nano: numbers that are known

def test_nano_estimate_with_the_default_profile_follows_the_known_numbers():
    est = _est(NANO / "base.yaml")
    st = _by_id(est)
    assert st["mix"].rows_out == 6000  # data.sources.arith.count
    (t,) = est.teachers
    assert t.model == "nano-noisy" and t.samples == 2
    assert t.requests == pytest.approx(st["decontaminate"].rows_out * 2)
    assert t.output_tokens == pytest.approx(t.requests * 80.42)  # the teacher entry's measured mean
    assert t.gpu_hours == 0 and est.teacher_gpu_hours == 0  # a procedural teacher uses no GPU
    # verify: pass@1 of the teacher entry for samples, pass@2 for questions
    assert st["verify"].samples == pytest.approx(t.requests * 0.60484)
    assert st["verify"].rows_out == pytest.approx(st["distill"].rows_out * 0.64722)
    assert st["format"].rows_out == pytest.approx(st["verify"].samples)
    # SFT: max_steps 600 x global_batch_size 32 conversations of prompt + answer + chat template tokens
    s = est.sft
    assert s.sequences == 600 * 32
    assert s.mean_tokens.value == pytest.approx(21.74 + 80.42 + 23.1)
    assert s.tokens == pytest.approx(19200 * (21.74 + 80.42 + 23.1))
    assert s.cpu_hours == pytest.approx(s.tokens / 13746 / 3600) and est.sft_gpu_hours == 0


@pytest.mark.slow
def test_nano_estimate_matches_real_runs_of_the_nano_recipes(tmp_path: Path):
    """The nano profile and the nano teachers' entries are measurements: running the
    data stages must give what the estimate says (re-measure when this fails)."""
    from data_pipeline.cache import StageCache
    from data_pipeline.pipeline import run_data

    cache = StageCache(tmp_path / "cache")
    for name in ("base", "weak-teacher"):
        recipe = load_recipe(NANO / f"{name}.yaml")
        run = {r["stage"]: r for r in run_data(recipe, cache, tasks=1, workers=1, echo=lambda *a, **k: None).funnel()}
        est = estimate(recipe, ["nano"])
        for s in est.stages:
            assert s.rows_out == pytest.approx(run[s.id]["rows_out"], rel=0.005), (name, s.id)
        (t,) = est.teachers
        extra = run["distill"]["extra"]
        assert t.requests == pytest.approx(extra["requests"], rel=0.005)
        assert t.output_tokens == pytest.approx(extra["completion_tokens"], rel=0.005)
        assert t.prompt_tokens == pytest.approx(extra["prompt_tokens"], rel=0.005)
        assert est.sft.conversations == pytest.approx(run["format"]["rows_out"], rel=0.005)


# --------------------------------------------------------------------------- the real recipes

@pytest.mark.parametrize("path", REAL, ids=[f"{p.parent.name}/{p.stem}" for p in REAL])
def test_plan_prints_graph_and_estimate_of_each_real_recipe(path: Path, capsys):
    assert cli_main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    for needle in ("stage graph of", "expected rows:", "teacher (distill: vllm", "output tokens", "SFT (Qwen/Qwen2.5-7B-Instruct)",
                   "GPU hours: teacher", "null commit"):
        assert needle in out, needle

    est = _est(path)
    (t,) = est.teachers
    q = _by_id(est)["distill"].rows_in
    assert t.requests == pytest.approx(q * t.samples)
    assert t.output_tokens == pytest.approx(t.requests * t.mean_output_tokens.value)
    assert t.gpu_hours == pytest.approx(t.output_tokens / t.throughput.value / 3600)
    assert t.wall_hours == pytest.approx(t.gpu_hours / (t.tensor_parallel_size * t.data_parallel_size))
    s = est.sft
    assert s.epochs.value == 5 and s.sequences == pytest.approx(s.conversations * 5)
    assert s.tokens == pytest.approx(s.sequences * s.mean_tokens.value)
    assert s.gpu_hours == pytest.approx(s.tokens / s.throughput.value / 3600)
    assert s.gpus == 8 and s.wall_hours == pytest.approx(s.gpu_hours / 8)  # num_processes of zero3.yaml
    assert est.gpu_hours == pytest.approx(t.gpu_hours + s.gpu_hours) and est.gpu_hours > 100
    # every figure says where it came from
    assert "profile default" in t.throughput.source and "profile default" in s.throughput.source
    # the placeholder commits are flagged, one warning per Hub source
    recipe = load_recipe(path)
    hub = [n for n, src in recipe.spec.data.sources.items() if src.uri.startswith("hf://")]
    assert sum("null commit" in w for w in est.warnings) == len(hub) > 0


def test_each_ablation_moves_the_estimate_as_its_change_says():
    base = _est(ROOT / "recipes/math/base.yaml")
    one = _est(ROOT / "recipes/math/one-answer.yaml")
    assert one.teachers[0].requests == pytest.approx(base.teachers[0].requests / 16)
    assert one.teacher_gpu_hours == pytest.approx(base.teacher_gpu_hours / 16)
    assert one.sft.conversations == pytest.approx(base.sft.conversations / 16)

    nov = _est(ROOT / "recipes/math/no-verify.yaml")
    assert nov.teachers[0].output_tokens == pytest.approx(base.teachers[0].output_tokens)  # same teacher work
    assert nov.sft.conversations > base.sft.conversations  # wrong answers stay in
    assert _by_id(nov)["verify"].rows_out == _by_id(nov)["verify"].rows_in

    r1 = _est(ROOT / "recipes/math/r1-distill-teacher.yaml")
    assert r1.teachers[0].model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    assert r1.teachers[0].output_tokens == pytest.approx(r1.teachers[0].requests * 7000)  # its own profile entry
    assert r1.teacher_gpu_hours < base.teacher_gpu_hours

    code = _est(ROOT / "recipes/code/base.yaml")
    half = _est(ROOT / "recipes/code/longest-half.yaml")
    assert half.teachers[0].requests == pytest.approx(2 * code.teachers[0].requests)
    assert _by_id(half)["select"].rows_out == math.ceil(_by_id(half)["select"].rows_in * 0.5)
    assert half.sft.conversations == pytest.approx(code.sft.conversations, rel=0.001)  # a fixed SFT size
    assert [s.op for s in half.stages][-2:] == ["select", "format"]
    only = _est(ROOT / "recipes/code/code-contests-only.yaml")
    assert _by_id(only)["mix"].rows_out == _by_id(code)["mix"].rows_out

    sci, two = _est(ROOT / "recipes/science/base.yaml"), _est(ROOT / "recipes/science/two-sources.yaml")
    assert two.teacher_gpu_hours == pytest.approx(sci.teacher_gpu_hours)
    assert len(load_recipe(ROOT / "recipes/science/two-sources.yaml").spec.data.sources) == 2


# --------------------------------------------------------------------------- profiles

def test_a_profile_on_the_command_line_changes_the_figures_as_the_formulas_say(tmp_path: Path, capsys):
    mine = tmp_path / "cluster.yaml"
    mine.write_text(
        "name: cluster\nextends: default\nteachers:\n"
        "  - {model: Qwen/QwQ-32B, engine: vllm, tensor_parallel_size: 4, output_tokens_per_s_per_gpu: 2200,"
        " mean_output_tokens: 12000, source: measured on our cluster}\n"
        "students:\n  - {model: Qwen/Qwen2.5-7B-Instruct, tokens_per_s_per_gpu: 8000, template_tokens: 30}\n"
        "stages:\n  dedup: {keep: 0.5}\n")
    path = ROOT / "recipes/math/base.yaml"
    base, over = _est(path), _est(path, str(mine))
    b, o = _by_id(base), _by_id(over)
    # the command-line profile wins over the recipe's plan (dedup 0.93 there)
    assert o["dedup"].rows_out == pytest.approx(o["filter"].rows_out * 0.5)
    assert "profile cluster: stages.dedup.keep" in o["dedup"].basis[0]
    ratio = o["dedup"].rows_out / b["dedup"].rows_out
    bt, ot = base.teachers[0], over.teachers[0]
    assert ot.requests == pytest.approx(bt.requests * ratio)
    assert ot.output_tokens == pytest.approx(ot.requests * 12000)
    assert ot.gpu_hours == pytest.approx(bt.gpu_hours * ratio * (12000 / 9000) * (1100 / 2200))
    assert ot.throughput.source.startswith("profile cluster") and "measured on our cluster" in ot.throughput.source
    assert over.sft.gpu_hours == pytest.approx(over.sft.tokens / 8000 / 3600)
    # what the cluster profile does not give falls back to the recipe's plan and the default profile
    assert o["verify"].rows_out == pytest.approx(o["verify"].rows_in * 0.85)
    assert ot.mean_prompt_tokens.value == 200 and ot.mean_prompt_tokens.source.startswith("profile default")

    assert cli_main(["plan", str(path), "--profile", str(mine)]) == 0
    assert "2,200 tokens/s per GPU" in capsys.readouterr().out


def test_plan_json_includes_the_estimate(capsys):
    path = ROOT / "recipes/math/base.yaml"
    assert cli_main(["plan", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    est = doc["estimate"]
    assert [s["id"] for s in est["stages"]] == [s["id"] for s in doc["stages"]]
    t = est["teachers"][0]
    assert t["output_tokens"] == pytest.approx(t["requests"] * t["mean_output_tokens"]["value"])
    assert t["throughput"]["source"].startswith("profile default")
    totals = est["totals"]
    assert totals["gpu_hours"] == pytest.approx(totals["teacher_gpu_hours"] + totals["sft_gpu_hours"])
    assert est["sft"]["tokens"] > 0 and est["warnings"]


def test_shipped_profiles_load_and_unknown_ones_are_named():
    default, _ = load_profile("default")
    assert {t.model for t in default.teachers} >= {"Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"}
    assert all(t.source or t.lengths_source for t in default.teachers)
    assert all(s.source for s in default.students)
    nano, _ = load_profile("nano")
    assert nano.extends == "default"
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_profile("no-such-profile")


def test_a_bad_profile_fails_with_file_line_and_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nteachers:\n  - {model: x, output_tokens_per_sec: 5}\n")
    with pytest.raises(RecipeError) as info:
        load_profile(str(bad))
    (p,) = info.value.problems
    assert p.file == str(bad) and p.line == 3 and p.field == "teachers.0.output_tokens_per_sec" and p.message == "unknown key"


# --------------------------------------------------------------------------- the recipe's `plan:` section

def test_plan_hints_change_no_fingerprint(tmp_path: Path):
    from data_pipeline.fingerprint import model_fingerprint
    from data_pipeline.pipeline import plan

    src = ROOT / "recipes/math/base.yaml"
    stripped = _copy_recipe(tmp_path, src, lambda t: t[: t.index("\nplan:")] + "\n")
    other = _copy_recipe(tmp_path, src, lambda t: t.replace("dedup: {keep: 0.93}", "dedup: {keep: 0.5}"), "other.yaml")
    a, b, c = (load_recipe(p) for p in (src, stripped, other))
    assert b.spec.plan is None and a.spec.plan is not None
    assert [s.fingerprint for s in plan(a)] == [s.fingerprint for s in plan(b)] == [s.fingerprint for s in plan(c)]
    fp = plan(a)[-1].fingerprint
    assert model_fingerprint(fp, a.spec.sft.model_dump(mode="json")) == model_fingerprint(fp, c.spec.sft.model_dump(mode="json"))
    assert _by_id(estimate(c))["dedup"].rows_out != _by_id(estimate(a))["dedup"].rows_out


@pytest.mark.parametrize("edit,field,message", [
    (lambda t: t.replace("dedup: {keep: 0.93}", "dedupe: {keep: 0.93}"), "plan.stages.dedupe", "no stage 'dedupe'"),
    (lambda t: t.replace("dedup: {keep: 0.93}", "dedup: {keep: 1.5}"), "plan.stages", "out of range"),
    (lambda t: t.replace("dedup: {keep: 0.93}", "dedup: {kept: 0.9}"), "plan.stages", "unknown figure"),
    (lambda t: t + "  source_rows: {numina: 10}\n", "plan.source_rows.numina", "no source 'numina'"),
])
def test_bad_plan_hints_fail_with_file_line_and_field(tmp_path: Path, capsys, edit, field, message):
    path = _copy_recipe(tmp_path, ROOT / "recipes/math/base.yaml", edit)
    assert cli_main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and field in err and f"{path}:" in err


def test_a_source_without_a_row_count_is_named(tmp_path: Path):
    def no_mix(t: str) -> str:
        return t.replace("  mix: {size: 24000, seed: 0}\n", "")

    path = _copy_recipe(tmp_path, ROOT / "recipes/science/base.yaml", no_mix)
    # camel-ai's sets have rows in the default profile: the sum of all of them
    assert _by_id(estimate(load_recipe(path)))["mix"].rows_out == 60000

    def unknown(t: str) -> str:
        return no_mix(t).replace("camel-ai/biology@", "someone/unknown-set@")

    path = _copy_recipe(tmp_path, ROOT / "recipes/science/base.yaml", unknown, "unknown.yaml")
    with pytest.raises(RecipeError, match="row count") as info:
        estimate(load_recipe(path))
    assert info.value.problems[0].field == "data.sources.biology"
    hinted = _copy_recipe(tmp_path, path, lambda t: t + "  source_rows: {biology: 5000}\n", "hinted.yaml")
    est = estimate(load_recipe(hinted))
    assert _by_id(est)["mix"].rows_out == 45000 and "plan" in _by_id(est)["mix"].basis[2]


def test_upsampling_is_flagged(tmp_path: Path):
    path = _copy_recipe(tmp_path, ROOT / "recipes/science/base.yaml",
                        lambda t: t.replace("mix: {size: 24000, seed: 0}", "mix: {size: 90000, seed: 0}"))
    est = estimate(load_recipe(path))
    assert sum("upsamples" in w for w in est.warnings) == 3  # 30,000 each of 20,000 rows
