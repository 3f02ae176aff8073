"""The `filter` op (questions and teacher samples) and `verify` with majority
references and multiple choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.filters import FilterParams, filter_rows, language
from curation.verify import VerifyParams, verify
from data_pipeline.ops import OpContext
from data_pipeline.rows import new_row
from eval.scoring import extract_choice


def _ctx(tmp_path: Path) -> OpContext:
    return OpContext(stage_id="s", stage_dir=tmp_path / "stage", cache_root=tmp_path, workers=1)


def _sample(text: str, finish: str = "stop", tokens: int = 10, i: int = 0) -> dict:
    return {"text": text, "reasoning": None, "finish_reason": finish, "prompt_tokens": 5, "completion_tokens": tokens,
            "engine": "t", "model": "m", "error": None, "sample_index": i, "verdict": None, "extracted": None,
            "selected": finish != "error"}


def test_question_filters_give_reasons(tmp_path):
    rows = [new_row("s", "", "1"), new_row("s", "Short?", "1"), new_row("s", "What is two plus two, exactly?", None),
            new_row("s", "Quelle est la somme de deux et de deux, exactement, mon ami ?", "4"),
            new_row("s", "What is the sum of two and two, exactly, my friend?", "4"),
            new_row("s", "Compute " + "1 + " * 200 + "1.", "201")]
    out = filter_rows(rows, FilterParams(min_chars=10, max_tokens=100, languages=["en"]), _ctx(tmp_path))
    assert [r["problem"] for r in out.kept] == [rows[4]["problem"]]
    assert [reason for _, reason in out.dropped] == ["empty_problem", "too_short", "no_answer", "language",
                                                     "too_many_tokens"]
    assert language(r"Trouvez $x$ tel que $\frac{x}{2} = 3$ et donnez la réponse.") == "fr"


def test_token_counts_can_use_a_tokenizer(tmp_path):
    rows = [new_row("s", "abcdefghij", "1")]  # one word, ten byte-level tokens of the nano tokenizer
    assert filter_rows(rows, FilterParams(max_tokens=5), _ctx(tmp_path)).kept == rows
    dropped = filter_rows(rows, FilterParams(max_tokens=5, tokenizer="nano"), _ctx(tmp_path)).dropped
    assert dropped[0][1] == "too_many_tokens"


def test_response_filters_deselect_samples_and_drop_rows_left_empty(tmp_path):
    row = new_row("s", "What is 6 times 7, in a box?", "42")
    row["responses"] = [_sample("so \\boxed{42}", i=0), _sample("so \\boxed{4", "length", i=1),
                        _sample("it is 42", i=2), _sample("<think>\\boxed{42}</think> 42", i=3),
                        _sample("x" * 50, tokens=5000, i=4)]
    bare = new_row("s", "What is 1 + 1, in a box?", "2")
    bare["responses"] = [_sample("two", i=0)]
    params = FilterParams(responses={"drop_truncated": True, "require_boxed": True, "max_tokens": 4000})
    out = filter_rows([row, bare], params, _ctx(tmp_path))
    (kept,) = out.kept
    assert [x["selected"] for x in kept["responses"]] == [True, False, False, False, False]
    assert out.dropped[0][1] == "no_usable_sample"
    assert out.stats == {"deselected/truncated": 1, "deselected/no_boxed_answer": 3, "deselected/response_too_long": 1}


def test_extract_choice_never_reads_letters_out_of_words():
    assert extract_choice("A train leaves at noon. I think the answer is (C).") == "C"
    assert extract_choice("The answer is \\boxed{B}. As a check, option A fails.") == "B"
    assert extract_choice("the answer is a prime number") is None
    assert extract_choice("A car and a bus. I am sure.") is None
    assert extract_choice("answer is Avogadro's number") is None
    assert extract_choice("Answer: (d)") == "D"
    assert extract_choice("So the correct option is E") is None  # not an option here
    assert extract_choice("So the correct option is E", letters="ABCDE") == "E"
    assert extract_choice("<think>the answer is A</think>\nFinal answer: **C**") == "C"


def test_multiple_choice_verdicts(tmp_path):
    row = new_row("s", "Which gas is most abundant in air? (A) O2 (B) N2 (C) CO2 (D) Ar", "B")
    row["responses"] = [_sample("Nitrogen. The answer is (B).", i=0), _sample("A lot of oxygen: answer A", i=1),
                        _sample("I cannot tell.", i=2)]
    out = verify([row], VerifyParams(method="multiple_choice", keep="correct"), _ctx(tmp_path))
    (kept,) = out.kept
    assert [(x["verdict"], x["extracted"], x["selected"]) for x in kept["responses"]] == \
        [("correct", "B", True), ("incorrect", "A", False), ("no_answer", None, False)]


def test_majority_vote_is_the_reference_where_there_is_no_gold(tmp_path):
    agreed = new_row("s", "What is half of one?", None)
    agreed["responses"] = [_sample("\\boxed{\\frac{1}{2}}", i=0), _sample("so \\boxed{0.5}", i=1),
                           _sample("\\boxed{1/2}", i=2), _sample("\\boxed{2}", i=3)]
    split = new_row("s", "Pick a number.", None)
    split["responses"] = [_sample("\\boxed{1}", i=0), _sample("\\boxed{2}", i=1), _sample("\\boxed{3}", i=2)]
    gold = new_row("s", "What is 2+2?", "4")
    gold["responses"] = [_sample("\\boxed{4}", i=0), _sample("\\boxed{5}", i=1)]
    params = VerifyParams(reference="gold_or_majority", keep="correct", min_agreement=0.5)
    out = verify([agreed, split, gold], params, _ctx(tmp_path))
    by_problem = {r["problem"]: r for r in out.kept}
    maj = by_problem["What is half of one?"]
    assert [x["verdict"] for x in maj["responses"]] == ["correct", "correct", "correct", "incorrect"]
    assert json.loads(maj["meta"])["reference"] == {"kind": "majority", "answer": "\\frac{1}{2}", "votes": 3,
                                                    "samples": 4}
    assert "reference" not in json.loads(by_problem["What is 2+2?"]["meta"] or "{}")  # gold: nothing to record
    assert [(r["problem"], reason) for r, reason in out.dropped] == [("Pick a number.", "no_reference")]
    assert out.stats["reference/majority"] == 1 and out.stats["reference/no_majority"] == 1
    # gold only: the rows without gold are dropped as before
    out2 = verify([agreed, gold], VerifyParams(keep="correct"), _ctx(tmp_path))
    assert [reason for _, reason in out2.dropped] == ["no_gold_answer"]


def test_code_method_rejects_majority_references():
    with pytest.raises(ValueError, match="not to code"):
        VerifyParams(method="code", reference="majority")


def test_code_verdicts_run_the_rows_tests_in_the_sandbox(tmp_path):
    row = new_row("mbpp", "Write a function add(a, b) that returns the sum.", None,
                  meta=json.dumps({"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}))
    row["responses"] = [_sample("Here:\n```python\ndef add(a, b):\n    return a + b\n```", i=0),
                        _sample("```python\ndef add(a, b):\n    return a - b\n```", i=1),
                        _sample("I would add them.", i=2),
                        _sample("```python\nwhile True:\n    pass\n```", i=3)]
    untested = new_row("mbpp", "No tests here.", None)
    untested["responses"] = [_sample("```python\nprint(1)\n```", i=0)]
    out = verify([row, untested], VerifyParams(method="code", keep="correct", timeout_s=2.0), _ctx(tmp_path))
    (kept,) = out.kept
    assert [x["verdict"] for x in kept["responses"]] == ["correct", "incorrect", "no_answer", "timeout"]
    assert kept["responses"][0]["extracted"] == "2/2 tests" and kept["responses"][1]["extracted"] == "0/2 tests"
    assert [x["selected"] for x in kept["responses"]] == [True, False, False, False]
    assert out.dropped[0][1] == "no_tests" and out.dropped[0][0]["problem"] == "No tests here."
