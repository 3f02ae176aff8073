"""The `select` op: difficulty, response length and diversity (Vendi, G-Vendi)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.diversity import embed_texts, gradient_features, greedy_select, vendi_score
from curation.select import DiversityParams, SelectParams
from data_pipeline.cache import StageCache
from data_pipeline.errors import RecipeError
from data_pipeline.ops import OPS, OpContext
from data_pipeline.pipeline import run_data
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins
from data_pipeline.rows import new_row

torch.set_num_threads(1)
load_plugins()


def _groups(k: int, per: int, d: int = 16, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per` items in each of k mutually orthogonal directions (shuffled), and their group labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per)
    x = np.eye(d)[labels] + noise * rng.normal(size=(k * per, d))
    perm = rng.permutation(len(x))
    return x[perm], labels[perm]


def _gvendi_by_definition(g: np.ndarray) -> float:
    """exp(entropy) of the eigenvalues of the covariance of unit gradients, scaled to trace 1."""
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    cov = g.T @ g / len(g)
    w = np.linalg.eigvalsh(cov / np.trace(cov))
    w = w[w > 1e-12]
    return float(np.exp(-(w * np.log(w)).sum()))


# --------------------------------------------------------------------------- scores on constructed sets

def test_vendi_exact_on_hand_made_matrices():
    one = np.tile([[0.3, -1.0, 2.0]], (10, 1))
    assert vendi_score(one) == pytest.approx(1.0, abs=1e-9)  # n copies of one item
    for k in (2, 3, 5):
        x, _ = _groups(k, per=4)
        assert vendi_score(x) == pytest.approx(k, abs=1e-9)  # k orthogonal groups of equal size
    assert vendi_score(np.eye(7)) == pytest.approx(7, abs=1e-9)
    assert vendi_score(np.eye(300)[:6] * 3.0) == pytest.approx(6, abs=1e-9)  # fewer rows than dimensions
    # two unit vectors with cosine c: eigenvalues of K/2 are (1 +- c) / 2
    c = 0.6
    x = np.array([[1.0, 0.0], [c, math.sqrt(1 - c * c)]])
    p = np.array([(1 + c) / 2, (1 - c) / 2])
    assert vendi_score(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()), abs=1e-9)
    # unequal groups: 3 + 1 copies -> eigenvalues 3/4, 1/4
    assert vendi_score(np.eye(2)[[0, 0, 0, 1]]) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert vendi_score(np.zeros((0, 4))) == 0.0
    with pytest.raises(ValueError, match="zero"):
        vendi_score(np.zeros((2, 3)))


def test_gvendi_score_is_the_trace_normalised_covariance_entropy():
    rng = np.random.default_rng(1)
    for n, d in ((20, 8), (5, 64)):
        g = rng.normal(size=(n, d))
        assert vendi_score(g) == pytest.approx(_gvendi_by_definition(g), rel=1e-9)
    x, _ = _groups(4, per=3)
    assert _gvendi_by_definition(x) == pytest.approx(4)


def test_greedy_takes_one_of_each_group_before_a_second():
    k = 5
    x, labels = _groups(k, per=6, noise=0.05, seed=2)
    order = greedy_select(x, 2 * k)
    first, second = labels[order[:k]], labels[order[k:]]
    assert sorted(first) == list(range(k))
    assert sorted(second) == list(range(k))
    assert greedy_select(x, 2 * k) == order  # deterministic
    picked = vendi_score(x[order[:k]])
    assert picked == pytest.approx(k, abs=0.05)
    rng = np.random.default_rng(0)
    randoms = [vendi_score(x[rng.choice(len(x), k, replace=False)]) for _ in range(20)]
    assert picked > max(randoms)


def test_greedy_beats_random_subsets_on_unstructured_data_and_scales():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 64)) + 2.0 * rng.normal(size=(1, 64))  # a shared direction: room to choose
    order = greedy_select(x, 300)
    assert len(set(order)) == 300
    picked = vendi_score(x[order])
    randoms = [vendi_score(x[rng.choice(len(x), 300, replace=False)]) for _ in range(5)]
    assert picked > max(randoms)
    assert greedy_select(x, 5000) and len(greedy_select(x[:10], 50)) == 10


# --------------------------------------------------------------------------- embeddings

NEAR = ["What is the sum of 12 and 7?", "what is the sum of 12 and 7", "What is the sum of 12 and 7 ?"]
TOPICS = ["What is the sum of 12 and 7?", "Name the capital city of France.",
          "How do plants turn sunlight into chemical energy?", "Write a short poem about winter in the mountains."]


def test_embedding_vendi_orders_near_duplicates_below_distinct_topics():
    near, topics = vendi_score(embed_texts(NEAR)), vendi_score(embed_texts(TOPICS))
    assert near == pytest.approx(1.0, abs=0.1)
    assert topics > 3.0
    assert near < topics
    # three paraphrases of each of three topics: the greedy pick takes one per topic
    texts = [f"What is {a} plus {b}?" for a, b in ((3, 4), (13, 24), (7, 9))] + \
            ["Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?", "The Mona Lisa was painted by whom?"] + \
            ["How do I bake sourdough bread?", "Give me a sourdough bread recipe.", "Steps for baking sourdough bread at home?"]
    topic = np.repeat([0, 1, 2], 3)
    assert sorted(topic[greedy_select(embed_texts(texts), 3)]) == [0, 1, 2]


# --------------------------------------------------------------------------- G-Vendi

@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.nano.student import build_student

    return build_student(tmp_path_factory.mktemp("proxy"), "nano-2m", seed=0)


SAME = [("What is 12+34?", "12+34\n2+4=6, write 6\n1+3=4, write 4\n\\boxed{46}")] * 4
DIFFERENT = [("What is 12+34?", "12+34\n2+4=6, write 6\n1+3=4, write 4\n\\boxed{46}"),
             ("Compute 9*7.", "9*7\n9*7=63\n\\boxed{63}"),
             ("Write a poem about the sea.", "The sea is wide and grey; it rolls and sighs away."),
             ("Name the capital city of France.", "PARIS")]


def test_gvendi_identical_examples_score_one_and_different_ones_higher(proxy: Path):
    same = gradient_features(SAME, proxy, dim=256)
    different = gradient_features(DIFFERENT, proxy, dim=256)
    assert same.shape == (4, 256)
    assert np.allclose(np.linalg.norm(different, axis=1), 1.0)
    assert vendi_score(same) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(different) > 1.5
    # only the last decoder layer: cheaper, still separates them
    assert vendi_score(gradient_features(DIFFERENT, proxy, dim=256, layers=1)) > 1.2


def test_gvendi_is_deterministic_given_the_seed(proxy: Path):
    a = gradient_features(DIFFERENT, proxy, dim=256, seed=7)
    b = gradient_features(DIFFERENT, proxy, dim=256, seed=7)
    c = gradient_features(DIFFERENT, proxy, dim=256, seed=8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)  # another projection ...
    assert vendi_score(c) == pytest.approx(vendi_score(a), rel=0.15)  # ... measuring about the same


# --------------------------------------------------------------------------- difficulty and length on hand-made rows

def _row(rid: str, verdicts: list[str | None], tokens: list[int] | None = None, problem: str | None = None) -> dict:
    r = new_row("hand", problem or f"question {rid}", "1", id=rid)
    tokens = tokens or [10] * len(verdicts)
    r["responses"] = [
        {"text": f"answer {i}", "reasoning": None, "finish_reason": "length" if v == "truncated" else "stop",
         "prompt_tokens": 5, "completion_tokens": t, "engine": "procedural", "model": "m", "error": None,
         "sample_index": i, "verdict": v, "extracted": None, "selected": v == "correct"}
        for i, (v, t) in enumerate(zip(verdicts, tokens))]
    return r


def _run(rows: list[dict], tmp_path: Path, **params):
    op = OPS["select"]
    return op.fn(rows, op.params.model_validate(params), OpContext("select", tmp_path, tmp_path))


def _reasons(result) -> dict[str, str]:
    return {r["id"]: why for r, why in result.dropped}


def test_difficulty_keeps_questions_the_teacher_does_not_always_solve(tmp_path: Path):
    rows = [
        _row("a", ["correct", "correct", "correct", "correct"]),  # 1.0
        _row("b", ["correct", "incorrect", "correct", "correct"]),  # 0.75
        _row("c", ["correct", "no_answer"]),  # 0.5
        _row("d", ["correct", "truncated", "incorrect", "incorrect"]),  # 0.25: truncated counts as not solved
        _row("e", ["correct", "error", "timeout"]),  # 1.0: error / timeout are not judged
        _row("f", ["incorrect", "incorrect"]),  # 0.0
    ]
    res = _run(rows, tmp_path, difficulty={"min_pass_rate": 0.1, "max_pass_rate": 0.75})
    assert [r["id"] for r in res.kept] == ["b", "c", "d"]
    assert _reasons(res) == {"a": "too_easy", "e": "too_easy", "f": "too_hard"}
    assert res.stats["difficulty/pass_rate_in"] == pytest.approx((1 + 0.75 + 0.5 + 0.25 + 1 + 0) / 6)
    assert res.stats["difficulty/pass_rate_out"] == pytest.approx(0.5)


def test_questions_without_verdicts_fail_or_follow_the_policy(tmp_path: Path):
    rows = [_row("a", ["correct", "incorrect"]), _row("u", ["unverified", "unverified"]), _row("n", [None])]
    with pytest.raises(ValueError, match=r"2 question\(s\) have no judged sample.*verify"):
        _run(rows, tmp_path, difficulty={"max_pass_rate": 0.75})
    kept = _run(rows, tmp_path, difficulty={"max_pass_rate": 0.75, "unverified": "keep"})
    assert [r["id"] for r in kept.kept] == ["a", "u", "n"]
    dropped = _run(rows, tmp_path, difficulty={"max_pass_rate": 0.75, "unverified": "drop"})
    assert [r["id"] for r in dropped.kept] == ["a"] and _reasons(dropped) == {"u": "unverified", "n": "unverified"}


def test_length_keeps_the_longest_or_shortest_with_ties_by_id(tmp_path: Path):
    rows = [
        _row("r3", ["correct", "correct"], [100, 300]),  # mean 200, max 300
        _row("r1", ["correct", "incorrect"], [150, 5000]),  # the incorrect sample is not selected: 150
        _row("r2", ["correct"], [200]),  # ties r3 on the mean; r2 < r3
        _row("r0", ["correct"], [40]),
        _row("r4", ["incorrect"], [900]),  # nothing selected
    ]
    res = _run(rows, tmp_path, length={"keep": "longest", "size": 2})
    assert [r["id"] for r in res.kept] == ["r3", "r2"]  # input order is kept
    assert _reasons(res) == {"r1": "shorter_responses", "r0": "shorter_responses", "r4": "no_selected_sample"}
    assert res.stats["length/mean_tokens_in"] == pytest.approx((200 + 150 + 200 + 40) / 4)
    assert res.stats["length/mean_tokens_out"] == pytest.approx(200)
    # a tie at the cut goes to the smaller id
    assert [r["id"] for r in _run(rows, tmp_path, length={"size": 1}).kept] == ["r2"]
    assert [r["id"] for r in _run(rows, tmp_path, length={"size": 1, "aggregate": "max"}).kept] == ["r3"]
    short = _run(rows, tmp_path, length={"keep": "shortest", "fraction": 0.5})  # ceil(0.5 * 4) = 2
    assert [r["id"] for r in short.kept] == ["r1", "r0"]
    assert _reasons(short)["r3"] == "longer_responses"


def test_all_three_parts_in_order_with_reasons_and_scores(tmp_path: Path):
    problems = ["What is 2 plus 3?", "What is 2 plus 3 ?", "what is 2 plus 3", "Who painted the Mona Lisa?",
                "How do I bake sourdough bread?", "Name the largest planet in the solar system."]
    rows = [_row(f"q{i}", ["correct", "incorrect"], [50 + i, 50 + i], problem=p) for i, p in enumerate(problems)]
    rows.append(_row("easy", ["correct", "correct"], problem="What is 10 plus 10?"))
    rows.append(_row("short", ["correct", "incorrect"], [1, 1], problem="Why is the sky blue?"))
    res = _run(rows, tmp_path, difficulty={"max_pass_rate": 0.75}, length={"size": 6},
               diversity={"method": "vendi", "size": 4})
    reasons = _reasons(res)
    assert reasons["easy"] == "too_easy" and reasons["short"] == "shorter_responses"
    # two of the three near-identical "2 plus 3" questions go
    assert sorted(reasons.values()).count("less_diverse") == 2
    assert {"q3", "q4", "q5"} <= {r["id"] for r in res.kept}
    assert len(res.kept) == 4
    assert res.stats["vendi/after"] > res.stats["vendi/before"] - 1e-9
    assert res.stats["vendi/after"] == pytest.approx(4, abs=0.4)
    assert all(isinstance(v, float) for v in res.stats.values())
    # measuring only: nothing dropped; works before distill (no responses)
    bare = [dict(r, responses=None) for r in rows]
    measured = _run(bare, tmp_path, diversity={"method": "vendi"})
    assert len(measured.kept) == len(rows) and not measured.dropped
    assert measured.stats["vendi/before"] == measured.stats["vendi/after"]


def test_gvendi_selection_on_rows(tmp_path: Path, proxy: Path):
    rows = [_row(f"s{i}", ["correct"], problem=p) for i, (p, _) in enumerate(SAME[:3])]
    rows += [_row(f"d{i}", ["correct"], problem=p) for i, (p, _) in enumerate(DIFFERENT[1:])]
    for r, (_, text) in zip(rows, SAME[:3] + DIFFERENT[1:]):
        r["responses"][0]["text"] = text
    res = _run(rows, tmp_path, diversity={"method": "gvendi", "size": 4, "dim": 256, "proxy": {"path": str(proxy)}})
    kept = {r["id"] for r in res.kept}
    assert len(kept & {"s0", "s1", "s2"}) == 1 and {"d0", "d1", "d2"} <= kept
    assert res.stats["gvendi/after"] > res.stats["gvendi/before"]
    # the default proxy is the nano student made from its config with seed 0 (the same weights)
    again = _run(rows, tmp_path, diversity={"method": "gvendi", "size": 4, "dim": 256})
    assert again.stats == res.stats and [r["id"] for r in again.kept] == [r["id"] for r in res.kept]


# --------------------------------------------------------------------------- in a recipe

BASE = """\
name: select-small
version: 1.0.0
data:
  sources:
    arith: {uri: "nano://arith?levels=1-3&families=add,sub,mul", count: 400, seed: 3}
  stages:
    filter: {min_chars: 8}
    distill: {engine: procedural, model: nano-noisy, samples: 4, sampling: {temperature: 0.7, max_tokens: 256}}
    verify: {keep: correct}
@SELECT@    measure: {op: select, diversity: {method: vendi}}
    format: {}
"""
SELECT = """\
    select:
      difficulty: {min_pass_rate: 0.0, max_pass_rate: 0.75}
      length: {keep: longest, fraction: 0.8}
      diversity: {method: gvendi, fraction: 0.5, dim: 256, proxy: {init: nano-2m, seed: 0}}
"""
RECIPE = BASE.replace("@SELECT@", SELECT)


def _write(tmp_path: Path, text: str, name: str = "sel") -> Path:
    d = tmp_path / "recipes"
    d.mkdir(exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(text)
    return p


def test_select_runs_in_a_recipe(tmp_path: Path):
    recipe = load_recipe(_write(tmp_path, RECIPE))
    cache = StageCache(tmp_path / "cache")
    result = run_data(recipe, cache, echo=lambda *a, **k: None)
    funnel = {f["stage"]: f for f in result.funnel()}
    sel, measure = funnel["select"], funnel["measure"]
    assert sel["op"] == "select" and funnel["verify"]["rows_out"] == sel["rows_in"]
    assert sel["rows_in"] - sum(sel["dropped"].values()) == sel["rows_out"] > 0
    assert set(sel["dropped"]) <= {"too_easy", "too_hard", "shorter_responses", "less_diverse"}
    assert sel["dropped"]["too_easy"] > 0 and sel["dropped"]["less_diverse"] > 0
    extra = sel["extra"]
    for key in ("gvendi/before", "gvendi/after", "gvendi/random_subset", "difficulty/pass_rate_in",
                "length/mean_tokens_out"):
        assert isinstance(extra[key], float), key
    assert extra["difficulty/pass_rate_out"] <= 0.75
    assert extra["gvendi/after"] > extra["gvendi/random_subset"]
    assert measure["rows_in"] == measure["rows_out"] == sel["rows_out"]
    assert measure["extra"]["vendi/before"] == measure["extra"]["vendi/after"] > 1
    # the stats are in the stage cache too (the card's funnel reads them), and dropped rows keep their reason
    by_id = {s.stage.id: s.stage.fingerprint for s in result.stages}
    assert cache.stats(by_id["select"])["extra"] == extra
    dropped = cache.read(by_id["select"], "dropped").to_pylist()
    assert len(dropped) == sum(sel["dropped"].values())
    assert {r["drop_reason"] for r in dropped} == set(sel["dropped"])
    kept = cache.read(by_id["format"]).to_pylist()
    assert len({r["id"] for r in kept}) == sel["rows_out"]
    # a rerun is free and changes nothing
    again = run_data(recipe, cache, echo=lambda *a, **k: None)
    assert all(s.cached for s in again.stages)


@pytest.mark.parametrize("stage, field", [
    ("select: {diversity: {size: 0}}", "data.stages.select.diversity.size"),
    ("select: {diversity: {size: 10, fraction: 0.5}}", "data.stages.select.diversity.fraction"),
    ("select: {diversity: {method: umap}}", "data.stages.select.diversity.method"),
    ("select: {diversity: {method: gvendi, proxy: {init: gpt-9}}}", "data.stages.select.diversity.proxy.init"),
    ("select: {difficulty: {max_pass_rate: 1.5}}", "data.stages.select.difficulty.max_pass_rate"),
    ("select: {difficulty: {min_pass_rate: 0.8, max_pass_rate: 0.5}}", "data.stages.select.difficulty.max_pass_rate"),
    ("select: {length: {keep: longest}}", "data.stages.select.length"),
    ("select: {length: {size: 3, by: chars}}", "data.stages.select.length.by"),
    ("select: {}", "data.stages.select"),
])
def test_bad_select_params_name_the_field(tmp_path: Path, stage: str, field: str):
    text = BASE.replace("@SELECT@", f"    {stage}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, text))
    assert any(p.field == field for p in e.value.problems), str(e.value)


def test_difficulty_without_verify_is_rejected_at_load(tmp_path: Path):
    text = RECIPE.replace("    verify: {keep: correct}\n", "")
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, text))
    assert any(p.field == "data.stages.select.difficulty" and "verify" in p.message for p in e.value.problems)
    after_format = RECIPE.replace("    format: {}\n", "").replace("    measure:", "    format: {}\n    measure:")
    with pytest.raises(RecipeError, match="data.stages.measure: `select` must run before `format`"):
        load_recipe(_write(tmp_path, after_format, "late"))


def test_params_model_defaults():
    p = SelectParams.model_validate({"diversity": {"method": "gvendi", "size": 5}})
    assert p.diversity.proxy_spec().init == "nano-2m"
    assert DiversityParams().method == "vendi" and DiversityParams().size is None
