"""The data pipeline on real parquet: determinism, stage cache, resume, publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets

from data_pipeline.cache import StageCache
from data_pipeline.cli import main as cli_main
from data_pipeline.pipeline import plan, run_data
from data_pipeline.publish import publish_dataset
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins
from data_pipeline.registry import LocalRegistry, read_card_data

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests/recipes/good/small.yaml"

load_plugins()


def _write_variant(tmp: Path, name: str, replace: tuple[str, str] | None = None) -> Path:
    text = SMALL.read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    d = tmp / "recipes"
    d.mkdir(exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(text)
    return p


def _bytes(cache: StageCache, fp: str) -> list[bytes]:
    return [f.read_bytes() for f in cache.shards(fp)]


def test_two_runs_from_empty_caches_are_byte_identical(tmp_path: Path):
    recipe = load_recipe(SMALL)
    a, b = StageCache(tmp_path / "a"), StageCache(tmp_path / "b")
    ra = run_data(recipe, a, echo=lambda *x, **k: None)
    rb = run_data(recipe, b, tasks=3, workers=1, echo=lambda *x, **k: None)  # other sharding, same data
    assert [s.stage.fingerprint for s in ra.stages] == [s.stage.fingerprint for s in rb.stages]
    assert all(not s.cached for s in ra.stages)
    for sa in ra.stages:
        rows_a = a.read(sa.stage.fingerprint).to_pylist()
        rows_b = b.read(sa.stage.fingerprint).to_pylist()
        assert rows_a == rows_b, sa.stage.id
    # same sharding: byte-identical files
    c = StageCache(tmp_path / "c")
    rc = run_data(recipe, c, echo=lambda *x, **k: None)
    for sa, sc in zip(ra.stages, rc.stages):
        assert _bytes(a, sa.stage.fingerprint) == _bytes(c, sc.stage.fingerprint)


def test_funnel_counts_what_each_stage_removed(tmp_path: Path):
    recipe = load_recipe(SMALL)
    cache = StageCache(tmp_path / "cache")
    result = run_data(recipe, cache, echo=lambda *x, **k: None)
    funnel = {f["stage"]: f for f in result.funnel()}
    for f in funnel.values():
        assert f["rows_in"] - sum(f["dropped"].values()) == f["rows_out"] or f["op"] == "format"
    # every planted malformed row is filtered, every contaminated row is caught by decontamination
    by_id = {s.stage.id: s.stage.fingerprint for s in result.stages}
    mixed = cache.read(by_id["mix"]).to_pylist()
    planted = [json.loads(r["meta"])["planted"] for r in mixed]
    dropped = {s.stage.id: cache.read(s.stage.fingerprint, "dropped").to_pylist() for s in result.stages}
    contaminated = dropped["decontaminate"]
    reaching = [json.loads(r["meta"])["planted"] for r in cache.read(by_id["dedup"]).to_pylist()]
    assert len(contaminated) == reaching.count("contamination") > 0
    assert all(json.loads(r["meta"])["planted"] == "contamination" for r in contaminated)
    assert all(r["drop_reason"] == "contaminated:nano-bench" for r in contaminated)
    assert funnel["dedup"]["dropped"]["exact_duplicate"] >= planted.count("exact_dup")
    assert sum(funnel["filter"]["dropped"].values()) >= 1
    # verification: every kept SFT conversation's answer is the gold answer (math-verify, independently)
    from eval.scoring import score

    final = cache.read(result.fingerprint).to_pylist()
    assert final and all(score(r["answer"], r["messages"][-1]["content"])[0] for r in final)
    assert sum(f["extra"].get("verdict/incorrect", 0) for f in funnel.values()) > 0
    assert funnel["distill"]["extra"]["requests"] == 2 * funnel["distill"]["rows_in"]


def test_changing_verify_reuses_the_teachers_answers(tmp_path: Path):
    cache = StageCache(tmp_path / "cache")
    base = run_data(load_recipe(SMALL), cache, echo=lambda *x, **k: None)
    variant = _write_variant(tmp_path, "keep-all", ("verify: {keep: correct}", "verify: {keep: all}"))
    again = run_data(load_recipe(variant), cache, echo=lambda *x, **k: None)
    cached = {s.stage.id: s.cached for s in again.stages}
    assert cached == {"mix": True, "filter": True, "dedup": True, "decontaminate": True, "distill": True,
                      "verify": False, "format": False}
    assert again.stages[-1].stats["rows_out"] > base.stages[-1].stats["rows_out"]
    # ... and the verdicts: each (gold, response) pair is scored once
    verify = {s.stage.id: s for s in again.stages}["verify"].stats["extra"]
    assert verify["verdicts_scored"] == 0 and verify["verdicts_cached"] > 0
    # more samples: the first two come from the request cache, only the new ones are sent
    more = _write_variant(tmp_path, "more", ("samples: 2", "samples: 3"))
    third = run_data(load_recipe(more), cache, echo=lambda *x, **k: None)
    d = {s.stage.id: s for s in third.stages}["distill"].stats["extra"]
    assert d["requests_cached"] == 2 * d["requests"] / 3 and d["requests_new"] == d["requests"] / 3
    assert d["attempts"] == d["requests_new"]


def test_killed_run_resumes_from_the_last_finished_stage(workdir: Path):
    recipe = _write_variant(workdir, "big", ("count: 600", "count: 3000"))
    cmd = [sys.executable, "-m", "data_pipeline", "run", str(recipe), "--no-publish"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stages = workdir / "cache" / "stages"
    deadline = time.time() + 120
    while time.time() < deadline and (not stages.is_dir() or len(list(stages.iterdir())) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in stages.iterdir()}
    assert 3 <= len(finished) < 7, "the kill should land mid-run"
    stats = workdir / "stats.json"
    assert cli_main(["run", str(recipe), "--no-publish", "--stats-json", str(stats)]) == 0
    funnel = json.loads(stats.read_text())
    assert {f["fingerprint"] for f in funnel if f["cached"]} == finished
    # identical to an uninterrupted run in a fresh cache
    fresh = StageCache(workdir / "fresh")
    clean = run_data(load_recipe(recipe), fresh, echo=lambda *x, **k: None)
    resumed = StageCache(workdir / "cache")
    assert resumed.read(clean.fingerprint).to_pylist() == fresh.read(clean.fingerprint).to_pylist()


def test_publish_to_the_local_registry(workdir: Path):
    recipe = load_recipe(SMALL)
    cache, registry = StageCache(), LocalRegistry()
    result = run_data(recipe, cache, echo=lambda *x, **k: None)
    repo, commit = publish_dataset(recipe, result, cache, registry)
    assert repo == "local/small"
    assert registry.resolve("datasets", repo, "v1.0.0") == commit
    assert registry.find_fingerprint("datasets", repo, result.fingerprint) == commit
    snap = registry.snapshot("datasets", repo, "v1.0.0")
    card = read_card_data(snap / "README.md")
    assert card["commonthoughts"]["fingerprint"] == result.fingerprint
    assert [s["id"] for s in card["commonthoughts"]["stages"]] == [s.id for s in plan(recipe)]
    assert "## Stage funnel" in (snap / "README.md").read_text()
    ds = datasets.load_dataset(str(snap), split="train")  # the default config
    assert ds.num_rows == result.stages[-1].stats["rows_out"]
    assert ds[0]["messages"][-1]["role"] == "assistant"
    prov = datasets.load_dataset(str(snap), "provenance", split="train")
    assert prov.num_rows == result.stages[-2].stats["rows_out"]
    assert {r["verdict"] for row in prov["responses"] for r in row} >= {"correct"}
    dropped = datasets.load_dataset(str(snap), "dropped", split="train")
    assert set(dropped["stage"]) >= {"filter", "dedup", "decontaminate", "verify"}
    # publishing the same data again makes no new commit
    assert publish_dataset(recipe, result, cache, registry)[1] == commit


def test_local_file_source_with_field_map(workdir: Path):
    src = workdir / "recipes" / "q.jsonl"
    src.parent.mkdir()
    rows = [{"question": f"What is {i} plus {i}?", "gold": str(2 * i), "extra": i} for i in range(20)]
    rows.append(rows[3])
    src.write_text("\n".join(json.dumps(r) for r in rows))
    recipe = workdir / "recipes" / "file.yaml"
    recipe.write_text(
        "name: file-src\nversion: 0.1.0\ndata:\n  sources:\n"
        "    q: {uri: q.jsonl, fields: {problem: question, answer: gold}}\n"
        "  stages:\n    dedup: {}\n    distill: {model: nano-strong}\n    verify: {}\n    format: {}\n")
    r = load_recipe(recipe)
    result = run_data(r, StageCache(), echo=lambda *x, **k: None)
    f = {x["stage"]: x for x in result.funnel()}
    assert f["mix"]["rows_out"] == 21 and f["dedup"]["rows_out"] == 20
    first = plan(r)[0].fingerprint
    src.write_text(src.read_text() + "\n" + json.dumps({"question": "What is 1 plus 2?", "gold": "3"}))
    assert plan(load_recipe(recipe))[0].fingerprint != first  # the file's content is its revision


def test_hub_source_through_the_offline_mirror(workdir: Path, monkeypatch):
    """`hf://org/name@commit:split` goes through the same loader as the Hub; here an
    offline mirror maps it to the real GSM8K test file in the shared data."""
    from eval.benchmarks import shared_data_dir

    gsm8k = shared_data_dir() / "gsm8k" / "test.jsonl"
    commit = "740312add88f781978c0658806c59bc2815b9866"
    mirror = workdir / "mirror.json"
    mirror.write_text(json.dumps({f"openai/gsm8k@{commit}": str(gsm8k)}))
    monkeypatch.setenv("COMMONTHOUGHTS_HF_MIRROR", str(mirror))
    (workdir / "recipes").mkdir()
    recipe = workdir / "recipes" / "hub.yaml"
    recipe.write_text(
        "name: hub-src\nversion: 0.1.0\ndata:\n  sources:\n"
        f"    gsm8k: {{uri: 'hf://openai/gsm8k@{commit}:test', count: 300, fields: {{problem: question, answer: answer}}}}\n"
        "  stages:\n    dedup: {}\n    decontaminate: {benchmarks: [gsm8k]}\n")
    r = load_recipe(recipe)
    assert plan(r)[0].op.fingerprint_extra(plan(r)[0].params) == {"gsm8k": commit}
    result = run_data(r, StageCache(), echo=lambda *x, **k: None)
    f = {x["stage"]: x for x in result.funnel()}
    assert f["mix"]["rows_out"] == 300
    # the GSM8K test set is, of course, entirely contaminated with the GSM8K benchmark
    assert f["decontaminate"]["dropped"] == {"contaminated:gsm8k": f["dedup"]["rows_out"]}
