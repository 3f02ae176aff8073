"""The benchmark registry and the harness end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.engines import Completion, Engine, GenerationRequest, Sampling, get_engine
from eval.benchmarks import (
    BENCHMARKS,
    Benchmark,
    benchmark_problems,
    data_sha256,
    get_benchmark,
    register_benchmark,
    shared_data_dir,
)
from eval.harness import derive_seed, evaluate, load_details, load_results, write_results

# The tiny random Qwen2 shared with the engine tests (tests/ is on sys.path under pytest).
from test_transformers_engine import build_tiny_model

# In CI (CI=true) the shared data must be there: these tests then run and fail loudly instead of skipping.
needs_shared_data = pytest.mark.skipif(not shared_data_dir().is_dir() and not os.environ.get("CI"), reason="shared data folder not available")

FIXTURE_ROWS = [
    {"id": "p1", "problem": "Compute 2 + 2.", "answer": "4"},
    {"id": "p2", "problem": "Compute 3 * 4.", "answer": "12"},
    {"id": "p3", "problem": "What is half of 1?", "answer": "\\frac{1}{2}"},
    {"id": "p4", "problem": "Compute 10 - 7.", "answer": "3"},
    {"id": "p5", "problem": "Compute 9 + 1.", "answer": "10"},
]

# Fixed responses per (problem id, sample index): the expected verdicts are
#   p1 [1, 1], p2 [1, 0], p3 [0, 0] (one unextractable), p4 [0, 1], p5 [0, 0] (one truncated).
FIXED = {
    ("p1", 0): "2 + 2 = \\boxed{4}",
    ("p1", 1): "<think>is it \\boxed{5}?</think> It is \\boxed{4}.",
    ("p2", 0): "\\boxed{12}",
    ("p2", 1): "\\boxed{13}",
    ("p3", 0): "I cannot tell.",
    ("p3", 1): "\\boxed{0.25}",
    ("p4", 0): "\\boxed{4}",
    ("p4", 1): "First \\boxed{4}, no wait: \\boxed{3}",
    ("p5", 0): "\\boxed{11}",
    ("p5", 1): "Let me think about this for a very long",
}
EXPECTED = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=float)


class FixedEngine(Engine):
    """Answers from a table keyed by (problem id, sample index)."""

    name = "fixed"

    def generate(self, requests: list[GenerationRequest], sampling: Sampling, on_result=None) -> list[Completion]:
        by_problem = {row["problem"]: row["id"] for row in FIXTURE_ROWS}
        out = []
        for r in requests:
            text = FIXED[(by_problem[r.messages[0][1]], r.sample_index)]
            finish = "length" if text.endswith("long") else "stop"
            out.append(Completion(text, finish, prompt_tokens=5, completion_tokens=len(text.split()), engine=self.name))
        return out


@pytest.fixture
def fixture_bench():
    bench = register_benchmark(
        Benchmark(name="test-fixture-5", version="1", load=lambda: [dict(r) for r in FIXTURE_ROWS],
                  prompt_template="{problem}", default_samples=2, ks=[1, 2])
    )
    yield bench
    BENCHMARKS.pop(bench.name, None)


def test_registry_lookup_and_errors(fixture_bench):
    assert get_benchmark("test-fixture-5") is fixture_bench
    assert benchmark_problems("test-fixture-5")[0] == "Compute 2 + 2."
    with pytest.raises(KeyError, match="known:.*nano-bench"):
        get_benchmark("no-such-bench")
    with pytest.raises(ValueError, match="problem"):
        Benchmark(name="bad", version="1", load=list, prompt_template="no placeholder")
    dup = Benchmark(name="dup", version="1", load=lambda: FIXTURE_ROWS[:1] * 2, prompt_template="{problem}")
    with pytest.raises(ValueError, match="duplicate id"):
        dup.rows()


def test_registered_names_reach_the_data_pipeline_registry():
    from data_pipeline import registries
    assert {"nano-bench", "gsm8k", "math500"} <= registries.BENCHMARK_NAMES


def test_prompt_template_is_literal():
    bench = get_benchmark("math500")
    assert bench.render("Find $x^{2}$.") == "Find $x^{2}$.\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert get_benchmark("nano-bench").render("Compute 1 + 1.") == "Compute 1 + 1."


def test_nano_bench_reference_solutions_score_correct():
    from data_pipeline.nano import tasks
    from eval.scoring import score

    bench = get_benchmark("nano-bench")
    rows = bench.rows()
    assert len(rows) == 200 and bench.default_samples == 4 and bench.ks == (1, 2, 4)
    for row in rows[:: 25]:
        assert score(row["answer"], tasks.reference_solution(row["problem"])) == (True, row["answer"])


@needs_shared_data
def test_offline_public_benchmarks():
    gsm8k, math500 = get_benchmark("gsm8k").rows(), get_benchmark("math500").rows()
    assert len(gsm8k) == 1319 and len(math500) == 500
    assert gsm8k[0]["answer"] == "18" and gsm8k[0]["problem"].startswith("Janet")
    assert all("," not in r["answer"] and "####" not in r["answer"] for r in gsm8k)
    assert math500[0] == {**math500[0], "id": "test/precalculus/807.json", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"}
    for name in ("gsm8k", "math500"):
        bench = get_benchmark(name)
        assert bench.hub_id and len(bench.revision) == 40
    assert data_sha256(gsm8k) == data_sha256(get_benchmark("gsm8k").rows())


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "b", "p1", 0) == derive_seed(0, "b", "p1", 0)
    seeds = {derive_seed(s, b, p, j) for s in (0, 1) for b in ("a", "b") for p in ("p1", "p2") for j in range(4)}
    assert len(seeds) == 32 and all(0 <= s < 2**63 for s in seeds)


def test_fixed_engine_gives_exact_metrics(fixture_bench, tmp_path):
    sampling = Sampling(temperature=0.6, max_tokens=32)
    results, details = evaluate(FixedEngine("table"), ["test-fixture-5"], samples=2, sampling=sampling, seed=7)
    m = results["benchmarks"]["test-fixture-5"]["metrics"]
    assert m["pass@1"] == pytest.approx(EXPECTED.mean(axis=1).mean())  # 0.4
    assert m["pass@1"] == pytest.approx(0.4)
    assert m["pass@2"] == pytest.approx(0.6)
    assert m["maj@2"] == pytest.approx(0.4)  # ties go to the first sample: p1 and p2 right
    assert m["pass@1_ci95"][0] <= 0.4 <= m["pass@1_ci95"][1]
    assert m["extraction_failure_rate"] == pytest.approx(0.2)  # "I cannot tell." and the truncated one
    assert m["truncation_rate"] == pytest.approx(0.1)
    assert m["error_rate"] == 0.0 and m["scoring_timeout_rate"] == 0.0

    rows = details["test-fixture-5"]
    assert [(d["problem_id"], d["sample_index"]) for d in rows] == list(FIXED)
    got = np.array([d["correct"] for d in rows], dtype=float).reshape(5, 2)
    np.testing.assert_array_equal(got, EXPECTED)
    assert rows[0]["seed"] == derive_seed(7, "test-fixture-5", "p1", 0)
    assert rows[7]["extracted"] == "3" and rows[4]["extracted"] is None

    write_results(tmp_path / "run", results, details)
    assert load_results(tmp_path / "run") == json.loads(json.dumps(results))
    assert load_details(tmp_path / "run") == details
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["details.parquet", "results.json"]


def test_harness_end_to_end_with_tiny_model(fixture_bench, tmp_path):
    model_dir = build_tiny_model(tmp_path / "model")
    engine = get_engine("transformers", str(model_dir), batch_size=4, threads=1)
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=8)
    results, details = evaluate(engine, ["test-fixture-5"], samples=2, sampling=sampling, seed=1, ks=[1, 2, 4])

    assert results["schema_version"] == "1" and results["harness_version"]
    assert results["engine"]["engine"] == "transformers"
    assert results["sampling"] == {"temperature": 0.8, "top_p": 0.95, "max_tokens": 8}
    assert results["seed"] == 1 and results["samples"] == 2
    bench = results["benchmarks"]["test-fixture-5"]
    assert bench["version"] == "1" and len(bench["data_sha256"]) == 64 and bench["n_problems"] == 5
    m = bench["metrics"]
    assert set(m) == {
        "pass@1", "pass@1_ci95", "pass@2", "pass@2_ci95", "maj@2", "maj@2_ci95", "extraction_failure_rate",
        "truncation_rate", "error_rate", "scoring_timeout_rate", "mean_output_tokens", "median_output_tokens",
        "p90_output_tokens", "max_output_tokens", "mean_output_chars",
    }  # pass@4 and maj@4 are left out: only 2 samples
    assert m["pass@2_ci95"][0] <= m["pass@2"] <= m["pass@2_ci95"][1]
    assert 0.0 <= m["pass@1"] <= m["pass@2"] <= 1.0
    assert 0 < m["mean_output_tokens"] <= 8 and m["error_rate"] == 0.0
    assert set(results["timing"]) >= {"generation_s", "scoring_s", "total_s"}

    rows = details["test-fixture-5"]
    assert len(rows) == 10
    assert {d["finish_reason"] for d in rows} <= {"stop", "length"}
    assert all(d["prompt"] == f["problem"] for d, f in zip(rows[::2], FIXTURE_ROWS))

    # Seeds make the run reproducible, whatever the batch size.
    engine.batch_size = 3
    _, again = evaluate(engine, ["test-fixture-5"], samples=2, sampling=sampling, seed=1)
    assert [d["response"] for d in again["test-fixture-5"]] == [d["response"] for d in rows]

    out = write_results(tmp_path / "results", results, details)
    assert load_details(out) == details


def test_rescoring_a_details_file_reproduces_its_results(fixture_bench, tmp_path):
    from eval.cli import rescore_dir
    from eval.harness import rescore

    sampling = Sampling(temperature=0.6, max_tokens=32)
    results, details = evaluate(FixedEngine("table"), ["test-fixture-5"], samples=2, sampling=sampling, seed=7)
    run = write_results(tmp_path / "run", results, details)
    again, again_details = rescore(load_results(run), load_details(run), workers=2)
    assert again["benchmarks"] == load_results(run)["benchmarks"]
    assert again_details == load_details(run)
    lines: list[str] = []
    rescore_dir(str(run), out=str(tmp_path / "re"), echo=lines.append)
    assert lines[0].endswith("(identical metrics)")
    assert load_results(tmp_path / "re")["benchmarks"] == load_results(run)["benchmarks"]
    # a scorer change shows: tamper with one stored verdict and rescore restores it
    tampered = load_details(run)
    tampered["test-fixture-5"][0]["correct"] = not tampered["test-fixture-5"][0]["correct"]
    fixed, fixed_details = rescore(load_results(run), tampered, workers=1)
    assert fixed_details == load_details(run)


def test_multiple_choice_options_are_shuffled_per_question(tmp_path):
    from eval.benchmarks import Benchmark, register_benchmark, BENCHMARKS
    from eval.harness import LETTERS, render_problem

    rows = [{"id": f"q{i}", "problem": f"Question {i}?", "answer": "right", "choices": ["right", "w1", "w2", "w3"]}
            for i in range(40)]
    bench = Benchmark(name="test-mc", version="1", load=lambda: rows, prompt_template="{problem}",
                      answer_type="multiple_choice")
    golds = []
    for r in rows:
        prompt, gold = render_problem(bench, r, seed=0)
        assert f"({gold}) right" in prompt
        golds.append(gold)
        assert render_problem(bench, r, seed=0) == (prompt, gold)  # same seed, same order
    assert len(set(golds)) == 4  # not one order for every question
    assert [render_problem(bench, r, seed=1)[1] for r in rows] != golds
    assert set(golds) <= set(LETTERS[:4])


def test_results_schema_is_versioned_and_enforced(fixture_bench, tmp_path):
    from eval.schema import json_schema

    committed = json.loads((Path(__file__).resolve().parents[1] / "eval" / "results.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema(), sort_keys=True)), \
        "eval/results.schema.json is stale: regenerate it from eval.schema.json_schema()"
    results, details = evaluate(FixedEngine("table"), ["test-fixture-5"], samples=2,
                                sampling=Sampling(temperature=0.6, max_tokens=32), seed=7)
    assert results["hardware"]["cpus"] and results["scoring"]["versions"]["math-verify"]
    run = write_results(tmp_path / "run", results, details)
    record = json.loads((run / "results.json").read_text())
    record["benchmarks"]["test-fixture-5"]["data_sha256"] = "not-a-hash"
    (run / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"benchmarks.test-fixture-5.data_sha256"):
        load_results(run)
    record["schema_version"] = "99"
    (run / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="schema_version '99'"):
        load_results(run)
    bad = dict(results, samples=0)
    with pytest.raises(ValueError, match="samples"):
        write_results(tmp_path / "bad", bad, details)
    assert not (tmp_path / "bad" / "results.json").exists()
