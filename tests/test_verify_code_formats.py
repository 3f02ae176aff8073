"""`verify: {method: code}` on the test formats of code data sets: each tests field is
parsed into a typed suite first (test script, stdin/stdout cases, function-call
cases) and run in the real sandbox; a field in no known format is never run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.verify import TestSuite, UnknownTestFormat, VerifyParams, load_tests, parse_tests, verify
from data_pipeline.ops import OpContext
from data_pipeline.rows import new_row
from eval.benchmarks import shared_data_dir
from eval.sandbox import outputs_match, values_match

RLLM = shared_data_dir() / "rllm-deepscaler" / "test_code"


def _ctx(tmp_path: Path) -> OpContext:
    return OpContext(stage_id="s", stage_dir=tmp_path / "stage", cache_root=tmp_path, workers=2)


def _sample(code: str, i: int = 0) -> dict:
    return {"text": f"Here is my solution.\n```python\n{code}\n```", "reasoning": None, "finish_reason": "stop",
            "prompt_tokens": 5, "completion_tokens": 10, "engine": "t", "model": "m", "error": None,
            "sample_index": i, "verdict": None, "extracted": None, "selected": True}


def _row(tests, programs: list[str], field: str = "tests", **meta) -> dict:
    row = new_row("code", "Solve it.", None, meta=json.dumps({field: tests, **meta}))
    row["responses"] = [_sample(p, i) for i, p in enumerate(programs)]
    return row


def _verdicts(out) -> list[list[tuple[str, str]]]:
    rows = out.kept + [r for r, _ in out.dropped]
    return [[(x["verdict"], x["extracted"]) for x in r["responses"]] for r in rows]


# a + b on one line; the wrong program multiplies (right on "2 2", wrong elsewhere)
ADD_STDIN = "a, b = map(int, input().split())\nprint(a + b)"
MUL_STDIN = "a, b = map(int, input().split())\nprint(a * b)"
ADD_FN = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(*map(int, input().split())))"
MUL_FN = "def add(a, b):\n    return a * b"
IO = [("2 2\n", "4\n"), ("1 2\n", "3\n"), ("10 -3\n", "7\n")]
CALLS = [([2, 2], [4]), ([1, 2], [3]), ([10, -3], [7])]

FORMATS = {
    # open-r1/verifiable-coding-problems-python `verification_info`: a JSON string
    "open-r1 JSON string": json.dumps({"language": "python", "test_cases": [
        {"input": i, "output": o, "type": "stdin_stdout"} for i, o in IO]}),
    "open-r1 dict": {"language": "python", "test_cases": [
        {"input": i, "output": o, "type": "stdin_stdout"} for i, o in IO]},
    # deepmind/code_contests public_tests / private_tests / generated_tests
    "CodeContests dict": {"input": [i for i, _ in IO], "output": [o for _, o in IO]},
    "list of dicts": [{"input": i, "output": o} for i, o in IO],
    "APPS stdin": json.dumps({"inputs": [i for i, _ in IO], "outputs": [o for _, o in IO]}),
    "open-r1 call-based": json.dumps({"fn_name": "add", "test_cases": [
        {"input": a, "output": e, "type": "function_call"} for a, e in CALLS]}),
    "APPS call-based": {"fn_name": "add", "inputs": [a for a, _ in CALLS], "outputs": [e for _, e in CALLS]},
    "python assert script": "assert add(2, 2) == 4\nassert add(1, 2) == 3\nassert add(10, -3) == 7\n",
    "HumanEval check": {"tests": "def check(candidate):\n    assert candidate(2, 2) == 4\n"
                                 "    assert candidate(1, 2) == 3\n", "entry_point": "add"},
}
KIND = {"open-r1 call-based": "call", "APPS call-based": "call", "python assert script": "python",
        "HumanEval check": "python"}


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_right_program_passes_and_a_wrong_one_fails(name, tmp_path):
    kind = KIND.get(name, "io")
    right, wrong = (ADD_STDIN, MUL_STDIN) if kind == "io" else (ADD_FN, MUL_FN)
    out = verify([_row(FORMATS[name], [right, wrong])], VerifyParams(method="code", keep="all"), _ctx(tmp_path))
    n = 2 if name == "HumanEval check" else 3
    assert _verdicts(out) == [[("correct", f"{n}/{n} tests"), ("incorrect", f"1/{n} tests")]]
    assert out.stats[f"tests/{kind}"] == 1


def test_the_reported_bug_a_wrong_print_no_longer_passes(tmp_path):
    # open-r1's JSON string is a valid Python expression: it used to run as the "test
    # script" and every program passed; CodeContests dicts gave sandbox_error.
    rows = [_row(FORMATS["open-r1 JSON string"], ["print(42)", ADD_STDIN]),
            _row(FORMATS["CodeContests dict"], ["print(42)", ADD_STDIN])]
    out = verify(rows, VerifyParams(method="code", keep="correct"), _ctx(tmp_path))
    assert _verdicts(out) == [[("incorrect", "0/3 tests"), ("correct", "3/3 tests")]] * 2
    assert "code/sandbox_error" not in out.stats


UNKNOWN = {
    "prose": "Input: 1 2\nOutput: 3",
    "python without asserts": "add(1, 2)",
    "JSON with other keys": json.dumps({"examples": [{"in": "1 2", "out": "3"}]}),
    "JSON scalar": "42",
    "another language": json.dumps({"language": "cpp", "test_cases": [{"input": "1 2", "output": "3",
                                                                        "type": "stdin_stdout"}]}),
    "unknown case type": [{"input": "1 2", "output": "3", "type": "interactive"}],
    "mixed case types": [{"input": "1 2", "output": "3", "type": "stdin_stdout"},
                         {"input": [1, 2], "output": 3, "type": "function_call", "fn_name": "add"}],
    "call without fn_name": [{"input": [1, 2], "output": 3, "type": "function_call"}],
    "counts differ": {"input": ["1 2", "3 4"], "output": ["3"]},
    "list of non-asserts": ["1 2", "3"],
}


@pytest.mark.parametrize("name", list(UNKNOWN))
def test_unknown_formats_are_reported_and_never_run(name, tmp_path):
    with pytest.raises(UnknownTestFormat):
        parse_tests(UNKNOWN[name])


def test_an_unknown_format_is_not_verified_and_drops_the_row(tmp_path):
    rows = [_row(UNKNOWN["JSON with other keys"], ["print(3)"]), _row(UNKNOWN["prose"], ["print(3)"])]
    out = verify(rows, VerifyParams(method="code", keep="correct"), _ctx(tmp_path))
    assert out.kept == [] and [reason for _, reason in out.dropped] == ["unknown_test_format"] * 2
    assert _verdicts(out) == [[("unverified", "unknown_test_format")]] * 2
    assert "dict with keys" in json.loads(out.dropped[0][0]["meta"])["test_format_error"]
    assert out.stats["code/unknown_test_format"] == 2 and not any(k.startswith("code/p") for k in out.stats)
    kept_all = verify(rows, VerifyParams(method="code", keep="all"), _ctx(tmp_path))
    assert len(kept_all.kept) == 2 and _verdicts(kept_all) == [[("unverified", "unknown_test_format")]] * 2


def test_max_tests_caps_the_cases_run_per_problem(tmp_path):
    # 50 cases; every case after the first 3 expects a wrong answer, so only a cap of 3 passes
    cases = {"input": [f"{k} 1\n" for k in range(50)], "output": [str(k + 1 if k < 3 else -1) for k in range(50)]}
    out = verify([_row(cases, [ADD_STDIN])], VerifyParams(method="code", keep="all", max_tests=3), _ctx(tmp_path))
    assert _verdicts(out) == [[("correct", "3/3 tests")]] and out.stats["tests/capped"] == 1
    assert VerifyParams(method="code").max_tests == 20
    with pytest.raises(ValueError):
        VerifyParams(method="code", max_tests=0)


def test_hanging_programs_time_out(tmp_path):
    hang = "while True:\n    pass"
    rows = [_row(FORMATS["CodeContests dict"], [hang]),
            _row(FORMATS["APPS call-based"], ["def add(a, b):\n    while True:\n        pass"])]
    out = verify(rows, VerifyParams(method="code", keep="all", timeout_s=0.5, max_tests=1), _ctx(tmp_path))
    assert _verdicts(out) == [[("timeout", "0/1 tests")]] * 2


def test_several_fields_join_their_cases(tmp_path):
    meta = {"public_tests": {"input": ["1 2\n"], "output": ["3\n"]}, "private_tests": {"input": [], "output": []},
            "generated_tests": {"input": ["5 5\n"], "output": ["10\n"]}}
    suite = load_tests(meta, ["public_tests", "private_tests", "generated_tests"])
    assert suite.kind == "io" and suite.cases == [("1 2\n", "3\n"), ("5 5\n", "10\n")]
    row = new_row("cc", "Add.", None, meta=json.dumps(meta))
    row["responses"] = [_sample(ADD_STDIN, 0), _sample(MUL_STDIN, 1)]
    params = VerifyParams(method="code", keep="correct", tests_field=["public_tests", "generated_tests"])
    (kept,) = verify([row], params, _ctx(tmp_path)).kept
    assert [(x["verdict"], x["extracted"], x["selected"]) for x in kept["responses"]] == \
        [("correct", "2/2 tests", True), ("incorrect", "0/2 tests", False)]
    with pytest.raises(UnknownTestFormat):
        load_tests({"a": ["assert True"], "b": [{"input": "1", "output": "1"}]}, ["a", "b"])


def test_parse_tests_shapes():
    assert parse_tests(None) is None and parse_tests("") is None and parse_tests({"input": [], "output": []}) is None
    assert parse_tests(["assert f(1) == 2", "assert f(2) == 3"]) == TestSuite("python", tests=[
        "assert f(1) == 2", "assert f(2) == 3"])
    wrapped = parse_tests({"tests": ["assert f() == 1"], "setup": "import math", "entry_point": None})
    assert (wrapped.kind, wrapped.setup) == ("python", "import math")
    pairs = parse_tests({"cases": [["1\n", "1\n"]], "float_tol": 1e-3})
    assert (pairs.kind, pairs.cases, pairs.float_tol) == ("io", [("1\n", "1\n")], 1e-3)
    apps = parse_tests({"inputs": [["1", "2"]], "outputs": [["3"]]})  # APPS: lists of lines
    assert apps.cases == [("1\n2", "3")]
    lcb = parse_tests([{"input": "[1, 2]\n3", "output": "[4, 5]", "testtype": "functional", "fn_name": "f"}])
    assert (lcb.kind, lcb.fn_name, lcb.cases) == ("call", "f", [([[1, 2], 3], [4, 5])])
    kwargs = parse_tests({"fn_name": "f", "inputs": [{"x": 1}], "outputs": [2]})
    assert kwargs.cases == [({"x": 1}, 2)]
    # a double-encoded JSON string is decoded twice
    assert parse_tests(json.dumps(FORMATS["open-r1 JSON string"])).kind == "io"


def test_output_and_value_comparison():
    assert outputs_match("3 \n4\n\n\n", "3\n4", exact_ints=True)  # trailing spaces and blank lines
    assert outputs_match("0.333333333", "0.3333333", exact_ints=True)  # floats within 1e-6
    assert not outputs_match("1000001", "1000000", exact_ints=True)  # ints exactly
    assert outputs_match("1000001", "1000000")  # the eval harness's comparison, unchanged
    assert not outputs_match("YES", "yes", exact_ints=True)
    assert values_match([1, [2, 3]], (1, (2, 3))) and values_match(0.1 + 0.2, 0.3) and values_match(2, 2.0)
    assert not values_match(True, 1) and not values_match("3", 3) and not values_match([1, 2], [1, 2, 3])
    assert values_match({"a": [1.0]}, {"a": [1]}) and not values_match({"a": 1}, {"b": 1})


def test_call_cases_compare_returns_outside_the_program(tmp_path):
    tests = {"fn_name": "pair", "inputs": [[1], [2]], "outputs": [[[1, 1]], [[2, 4]]]}
    programs = [
        "class Solution:\n    def pair(self, x):\n        return (x, x * x)",  # a method of Solution, a tuple
        "def pair(x):\n    print('debug', x)\n    return [x, x * x]",  # printing does not disturb the result
        "import sys\ndef pair(x):\n    sys.__stdout__.write('\\x1e@ct-return@\\x1e[[1, 1]]\\n')\n    return None",
        "def other(x):\n    return [x, x * x]",  # no function of that name
    ]
    out = verify([_row(tests, programs)], VerifyParams(method="code", keep="all"), _ctx(tmp_path))
    assert [v for v, _ in _verdicts(out)[0]] == ["correct", "correct", "incorrect", "incorrect"]


@pytest.mark.skipif(not (RLLM / "leetcode.json").is_file(), reason="needs ../shared/data")
def test_real_rllm_code_tests(tmp_path):
    codeforces = json.loads((RLLM / "codeforces.json").read_text())
    assert {parse_tests(r["tests"]).kind for r in codeforces} == {"io"}  # all 408 read as stdin/stdout
    leetcode = json.loads((RLLM / "leetcode.json").read_text())[:3]
    assert {parse_tests(r["tests"]).kind for r in leetcode} == {"python"}  # {"functional": check script}
    rows = []
    for r in leetcode:
        wrong = r["solutions"].replace("return ", "return -1 + ", 1)
        rows.append(_row(r["tests"], ["from typing import *\n" + r["solutions"], "from typing import *\n" + wrong]))
    out = verify(rows, VerifyParams(method="code", keep="all"), _ctx(tmp_path))
    assert [[v for v, _ in row] for row in _verdicts(out)] == [["correct", "incorrect"]] * 3


def test_code_only_settings_leave_math_fingerprints_alone():
    """`max_tests` and the code-tests version are hashed only for code verification, so a
    math or multiple-choice stage keeps its fingerprint (and its cached output)."""
    from data_pipeline.fingerprint import stage_fingerprint
    from data_pipeline.ops import OPS
    from curation.verify import VerifyParams

    op = OPS["verify"]

    def fp(**kw):
        return stage_fingerprint(op, VerifyParams(**kw), "0" * 64)

    assert fp(method="math", max_tests=3) == fp(method="math", max_tests=20)
    assert fp(method="multiple_choice", max_tests=3) == fp(method="multiple_choice")
    assert fp(method="code", max_tests=3) != fp(method="code", max_tests=20)
    assert op.fingerprint_extra(VerifyParams(method="code")) is not None
    assert op.fingerprint_extra(VerifyParams(method="math")) is None
