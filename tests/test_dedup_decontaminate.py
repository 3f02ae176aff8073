"""Dedup (exact and MinHash) and decontamination against the real benchmark files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.decontaminate import DecontaminateParams, find_contamination
from curation.dedup import DedupParams, dedup, lsh_params, minhash_clusters
from curation.text import normalise, tokens
from data_pipeline.cache import StageCache
from data_pipeline.errors import RecipeError
from data_pipeline.ops import OpContext
from data_pipeline.pipeline import run_data
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins
from data_pipeline.rows import new_row
from eval.benchmarks import get_benchmark, shared_data_dir

load_plugins()

needs_data = pytest.mark.skipif(not (shared_data_dir() / "qwen25math-eval").is_dir() and not os.environ.get("CI"),
                                reason="needs ../shared/data (required in CI)")


def _ctx(tmp_path: Path) -> OpContext:
    return OpContext(stage_id="dedup", stage_dir=tmp_path / "stage", cache_root=tmp_path)


def test_normalise_maps_typesetting_variants_to_one_form():
    a = r"Find $\dfrac{1}{2} + \left( 3,000 \right)$ for twelve cats, at 90^\circ."
    b = r"find \(\frac{1}{2}+(3{,}000)\) for 12 cats, at 90°."
    assert tokens(a) == tokens(b)
    assert tokens(r"\text{area} = 5.0\,\mathrm{cm}") == ["area", "=", "5", "cm"]
    assert normalise("3.50 and 2.0 and 10.25") == "3.5 and 2 and 10.25"


def test_exact_dedup_keeps_the_first_row_with_a_gold_answer(tmp_path):
    rows = [new_row("s", r"What is $\frac{1}{2}$ of 1,000?", None),
            new_row("t", r"What is $\dfrac{1}{2}$ of 1000?", "500"),
            new_row("u", r"what is \(\frac12\) of 1000 ?", "500"),
            new_row("s", "Something else entirely.", "1")]
    out = dedup(rows, DedupParams(method="exact"), _ctx(tmp_path))
    kept_ids = [r["id"] for r in out.kept]
    assert kept_ids == [rows[1]["id"], rows[2]["id"], rows[3]["id"]]  # \frac12 is written differently: kept
    (dropped, reason), = out.dropped
    assert reason == "exact_duplicate" and dropped["id"] == rows[0]["id"]
    assert json.loads(dropped["meta"]) == {"duplicate_of": rows[1]["id"], "dedup_cluster": rows[1]["id"]}
    assert json.loads(out.kept[0]["meta"])["dedup_cluster"] == rows[1]["id"]
    assert out.stats == {"clusters": 1, "duplicates": 1}


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(n)]


def test_minhash_finds_near_duplicates_above_the_threshold_only(tmp_path):
    rng = random.Random(1)
    base = [_words(rng, 80) for _ in range(300)]
    texts = [" ".join(d) for d in base]
    close, far = [], []
    for i in range(40):  # one word replaced: Jaccard of 5-grams ~0.88
        w = list(base[i]); w[40] = "zzzzzz"; texts.append(" ".join(w)); close.append((i, len(texts) - 1))
    for i in range(40, 80):  # every 8th word replaced: Jaccard ~0.3
        w = list(base[i]); w[::8] = ["yyyyyy"] * len(w[::8]); texts.append(" ".join(w)); far.append((i, len(texts) - 1))
    stats: dict = {}
    clusters = minhash_clusters(texts, DedupParams(method="minhash", threshold=0.8), tmp_path, stats)
    as_pairs = {tuple(c) for c in clusters}
    assert as_pairs == set(close)
    assert stats["verified_pairs"] <= stats["candidate_pairs"]


def test_minhash_dedup_op_records_clusters(tmp_path):
    problems = ["Let x be the number of apples that Alice has after she gives three apples to Bob and buys five more.",
                "Let x be the number of apples that Alice has after she gives three apples to Bob and buys 5 more!",
                "A short one.", "A short one.", "Completely different question about triangles and circles in a plane."]
    rows = [new_row(f"s{i}", p, "1" if i == 1 else None) for i, p in enumerate(problems)]
    out = dedup(rows, DedupParams(method="minhash", threshold=0.7, ngram=5), _ctx(tmp_path))
    assert [r["problem"] for r in out.kept] == [problems[1], problems[2], problems[4]]
    assert {reason for _, reason in out.dropped} == {"near_duplicate"}
    assert json.loads(out.dropped[0][0]["meta"])["duplicate_of"] == rows[1]["id"]  # the one with a gold answer
    assert out.stats["clusters"] == 2 and out.stats["duplicates"] == 2


def test_lsh_parameters_match_datasketch():
    datasketch_lsh = pytest.importorskip("datasketch.lsh")
    for t in (0.5, 0.8, 0.9):
        for n in (64, 128):
            assert lsh_params(t, n) == datasketch_lsh._optimal_param(t, n, 0.5, 0.5)
            assert lsh_params(t, n, 0.02, 0.98) == datasketch_lsh._optimal_param(t, n, 0.02, 0.98)


@pytest.mark.parametrize("bad, field", [
    ({"method": "exact", "threshold": 0.9}, "minhash only"),
    ({"method": "minhash", "num_buckets": 8}, "both num_buckets and hashes_per_bucket"),
    ({"method": "minhash", "threshold": 1.5}, "threshold"),
])
def test_bad_dedup_params_name_the_field(tmp_path, bad, field):
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text(json.dumps({
        "name": "r", "version": "1.0.0",
        "data": {"sources": {"a": {"uri": "nano://arith", "count": 10}}, "stages": {"dedup": bad, "format": {}}},
        "sft": {"model": {"init": "nano-2m"}, "args": {"max_steps": 1}}, "eval": {"benchmarks": ["nano-bench"]}}))
    with pytest.raises(RecipeError, match=f"data.stages.dedup.*{field}"):
        load_recipe(recipe)


BENCHES = ["math500", "aime24", "aime25", "amc23", "gsm8k"]


@needs_data
def test_light_edits_of_benchmark_problems_are_caught_and_siblings_are_not():
    params = DecontaminateParams(benchmarks=BENCHES)
    aime = get_benchmark("aime24").rows()[0]
    edited = aime["problem"].replace("Every morning", "Each morning").replace("$9$", "nine").replace("\\frac", "\\dfrac")
    hit = find_contamination(edited, None, params)
    assert hit and hit["benchmark"] == "aime24" and hit["id"] == aime["id"] and hit["method"] == "ngram"
    short = next(r for r in get_benchmark("math500").rows() if r["problem"].startswith("Compute $\\dbinom"))
    reworded = short["problem"].replace("Compute", "Calculate", 1)
    fz = find_contamination(reworded, None, params)
    assert fz and fz["id"] == short["id"]
    # the same template with other numbers is another problem
    sibling = "Compute $\\dbinom{40}{3}$." if "{31}" in short["problem"] else "Compute $\\dbinom{31}{28}$."
    assert find_contamination(sibling, None, params) is None
    assert find_contamination("How many apples does Maria have if she buys seven and eats two?", None, params) is None


@needs_data
def test_answer_field_is_checked_against_reference_solutions():
    params = DecontaminateParams(benchmarks=["math500"], fields=["problem", "answer"])
    row = get_benchmark("math500").rows()[3]
    hit = find_contamination("An unrelated question about a garden?", row["solution"], params)
    assert hit and hit["field"] == "answer" and hit["id"] == row["id"]
    assert find_contamination("An unrelated question about a garden?", "42", params) is None


@needs_data
def test_false_positive_rate_on_math_train_is_low():
    train = json.loads((shared_data_dir() / "rllm-deepscaler/train_math/math.json").read_text())
    rng = random.Random(0)
    sample = rng.sample(train, 1500)
    params = DecontaminateParams(benchmarks=BENCHES)
    hits = sum(find_contamination(r["problem"], None, params) is not None for r in sample)
    assert hits / len(sample) <= 0.01


@needs_data
def test_decontaminate_stage_reports_per_benchmark(tmp_path):
    problems = [r["problem"] for r in get_benchmark("math500").rows()[:3]] + \
               [r["problem"].replace("Find", "Determine") for r in get_benchmark("aime25").rows()[:2]]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"problem": p, "answer": "1"}) + "\n" for p in problems + ["What is 2+2?"]))
    recipe = tmp_path / "recipes" / "d.yaml"
    recipe.parent.mkdir()
    recipe.write_text(json.dumps({
        "name": "d", "version": "1.0.0",
        "data": {"sources": {"local": {"uri": str(src)}},
                 "stages": {"decontaminate": {"benchmarks": BENCHES}, "format": {}}},
        "sft": {"model": {"init": "nano-2m"}, "args": {"max_steps": 1}}, "eval": {"benchmarks": ["nano-bench"]}}))
    cache = StageCache(tmp_path / "cache")
    result = run_data(load_recipe(recipe), cache, echo=lambda *a, **k: None)
    st = {s.stage.id: s for s in result.stages}["decontaminate"]
    assert st.stats["rows_out"] == 1
    assert st.stats["extra"]["hits/math500"] == 3 and st.stats["extra"]["hits/aime25"] == 2
    dropped = pq.read_table(cache.root / "stages" / st.stage.fingerprint / "dropped").to_pylist()
    metas = [json.loads(r["meta"])["contamination"] for r in dropped]
    assert {m["benchmark"] for m in metas} == {"math500", "aime25"} and all(m["id"] for m in metas)
    # the dataset card reports them per benchmark, with examples
    from data_pipeline.publish import publish_dataset
    from data_pipeline.registry import LocalRegistry

    registry = LocalRegistry(tmp_path / "registry")
    repo, commit = publish_dataset(load_recipe(recipe), result, cache, registry)
    card = (registry.root / "datasets" / repo / "README.md").read_text()
    assert "## Decontamination" in card and "| aime25 | 2 | 2 | 0 |" in card and "| math500 | 3 | 3 | 0 |" in card
    assert "`aime25/I-1` (ngram, problem" in card
