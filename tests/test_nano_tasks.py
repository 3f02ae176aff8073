"""The nano track's procedural problems (tasks.py) and programmatic teachers (teachers.py)."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest
from math_verify import parse, verify

from data_pipeline.nano import teachers
from data_pipeline.nano.tasks import (
    FAMILIES,
    HUGE_CHARS,
    MAX_LEVEL,
    PHRASINGS,
    Fault,
    generate_source,
    gold_answer,
    nano_bench,
    parse_nano_uri,
    parse_problem,
    reference_solution,
    render_problem,
    work_columns,
)
from data_pipeline.nano.teachers import CANNOT_SOLVE, TEACHERS, TeacherSpec

COLUMN = re.compile(r"(\d+)([-+*])(\d+)(?:([-+])(\d+))?=(\d+), write (\d) (carry|borrow) (\d+)")
FINAL = re.compile(r"write (\d+)")


def boxed(text: str) -> str | None:
    """The last `\\boxed{...}` content: the strict extraction a verifier applies."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1] if found else None


def key(family: str, operands: tuple[int, int]) -> tuple[str, int, int]:
    a, b = sorted(operands) if family == "add" else operands
    return family, a, b


def random_operands(family: str, level: int, rng: random.Random) -> tuple[int, int]:
    lo, hi = (0 if level == 1 else 10 ** (level - 1)), 10**level - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if family == "mul":
        return a, rng.randint(2, 9)
    return (max(a, b), min(a, b)) if family == "sub" else (a, b)


RESTATE = re.compile(r"\d+[+*-]\d+")


def written_digits(text: str) -> list[int]:
    """Check every line of a trace is internally consistent; return the written digits."""
    *lines, last = text.split("\n")
    digits = []
    carry = 0
    for i, line in enumerate(lines):
        if i == 0 and RESTATE.fullmatch(line):  # the trace restates the operands first
            continue
        if final := FINAL.fullmatch(line):
            digits.append(int(final[1]))
            continue
        m = COLUMN.fullmatch(line)
        assert m, line
        value, digit, out = int(m[6]), int(m[7]), int(m[9])
        assert digit == value % 10, line
        if m[8] == "carry":
            assert out == value // 10, line
        if m[5] is not None:  # a carry-in that is used is the one announced
            assert int(m[5]) == carry, line
        carry = out
        digits.append(digit)
    assert last == f"\\boxed{{{int(''.join(map(str, reversed(digits))))}}}", text
    return digits


def exact_arithmetic(text: str) -> bool:
    """Whether every column line states the true value of its own expression."""
    for m in map(COLUMN.fullmatch, text.split("\n")[:-1]):
        if m is None:
            continue
        x, y = int(m[1]), int(m[3])
        value = {"+": x + y, "-": x - y, "*": x * y}[m[2]]
        value += {"+": 1, "-": -1, None: 0}[m[4]] * int(m[5] or 0)
        if value != int(m[6]):
            return False
    return True


# ---------------------------------------------------------------------- tasks


def test_source_is_deterministic_for_a_seed():
    assert generate_source(seed=3, count=500) == generate_source(seed=3, count=500)
    assert generate_source(seed=3, count=500) != generate_source(seed=4, count=500)
    assert nano_bench() == nano_bench()


def test_bench_and_source_are_stable_across_processes():
    code = (
        "import json; from data_pipeline.nano.tasks import nano_bench, generate_source;"
        "print(json.dumps([nano_bench(), generate_source(seed=5, count=300)]))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hashseed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hashseed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]) == [nano_bench(), generate_source(seed=5, count=300)]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_phrasing_parses_whatever_the_case_and_whitespace(family):
    rng = random.Random(family)
    for phrasing in range(len(PHRASINGS[family])):
        for level in range(1, MAX_LEVEL + 1):
            operands = random_operands(family, level, rng)
            text = render_problem(family, operands, phrasing)
            for variant in (text, text.lower(), text.upper(), f"  {text}\n", text.replace(" ", "  \t"), text[:-1]):
                assert parse_problem(variant) == (family, operands), variant


@pytest.mark.parametrize(
    "text",
    ["", "Compute 3 - 5.", "What is 12 times 34?", "Compute 3 / 4.", "Tell me a joke.", "Compute 3 + 4 + 5."],
)
def test_parse_rejects_what_it_does_not_support(text):
    assert parse_problem(text) is None


def test_reference_solutions_box_the_gold_answer():
    rng = random.Random(0)
    checked_with_math_verify = 0
    for i in range(3000):
        family, level = FAMILIES[i % 3], 1 + i // 3 % MAX_LEVEL
        operands = random_operands(family, level, rng)
        gold = gold_answer(family, operands)
        solution = reference_solution(render_problem(family, operands, rng.randrange(4)))
        assert boxed(solution) == gold
        assert exact_arithmetic(solution)
        written_digits(solution)
        if i % 20 == 0:
            assert verify(parse(f"${gold}$"), parse(solution))
            checked_with_math_verify += 1
    assert checked_with_math_verify == 150
    with pytest.raises(ValueError):
        reference_solution("Tell me a joke.")


def test_reference_traces_are_short_and_regular():
    assert reference_solution("Compute 347 + 589.") == (
        "347+589\n7+9=16, write 6 carry 1\n4+8+1=13, write 3 carry 1\n3+5+1=9, write 9 carry 0\n\\boxed{936}"
    )
    assert reference_solution("Subtract 498 from 503.").endswith("5-4-1=0, write 0 borrow 0\n\\boxed{5}")
    assert reference_solution("What is 347 times 6?").endswith("write 2\n\\boxed{2082}")
    rng = random.Random(1)
    longest = max(len(reference_solution(render_problem("add", random_operands("add", 3, rng)))) for _ in range(500))
    assert longest < 120


def test_bench_is_fixed_distinct_and_covers_every_family_and_level():
    bench = nano_bench()
    assert len(bench) == 200
    assert [item["id"] for item in bench] == [f"nano-bench/{i:04d}" for i in range(1, 201)]
    assert {(item["family"], item["level"]) for item in bench} == {(f, lv) for f in FAMILIES for lv in (1, 2, 3)}
    keys = set()
    for item in bench:
        family, operands = parse_problem(item["problem"])
        assert family == item["family"] and gold_answer(family, operands) == item["answer"]
        keys.add(key(family, operands))
    assert len(keys) == 200
    assert nano_bench(50) == bench[:50]
    assert nano_bench(50, seed=1) != nano_bench(50)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unplanted_rows_are_valid_distinct_and_disjoint_from_the_bench(seed):
    bench_keys = {key(*parse_problem(item["problem"])) for item in nano_bench()}
    rows = generate_source(seed=seed, count=3000, levels=(1, 4))
    assert all(set(row) == {"problem", "answer", "family", "level", "planted"} for row in rows)
    clean = [row for row in rows if row["planted"] is None]
    keys = []
    for row in clean:
        family, operands = parse_problem(row["problem"])
        assert family == row["family"] and 1 <= row["level"] <= 4
        assert gold_answer(family, operands) == row["answer"]
        keys.append(key(family, operands))
    assert len(set(keys)) == len(keys)
    assert not set(keys) & bench_keys
    assert Counter(row["level"] for row in clean).keys() == {1, 2, 3, 4}


def test_planted_rows_come_in_the_asked_numbers_and_are_what_they_claim():
    rows = generate_source(
        seed=11, count=2000, dup_rate=0.1, near_dup_rate=0.05, contamination_rate=0.03, malformed_rate=0.04
    )
    assert Counter(row["planted"] for row in rows) == {
        None: 1560,
        "exact_dup": 200,
        "near_dup": 100,
        "contamination": 60,
        "malformed": 80,
    }
    squash = {re.sub(r"\s+", " ", item["problem"]).strip().lower() for item in nano_bench()}
    seen_texts: set[str] = set()
    seen_keys: set[tuple[str, int, int]] = set()
    for row in rows:
        kind, problem = row["planted"], row["problem"]
        if kind is None:
            seen_texts.add(problem)
            seen_keys.add(key(*parse_problem(problem)))
        elif kind == "exact_dup":
            assert problem in seen_texts
        elif kind == "near_dup":
            assert problem not in seen_texts and key(*parse_problem(problem)) in seen_keys
            assert gold_answer(*parse_problem(problem)) == row["answer"]
        elif kind == "contamination":
            assert re.sub(r"\s+", " ", problem).strip().lower() in squash
        else:
            assert (
                not (problem or "").strip()
                or row["answer"] is None
                or parse_problem(problem) is None
                or len(problem) >= HUGE_CHARS
            )
    assert rows[0]["planted"] is None


def test_planted_rates_are_honoured_at_the_defaults():
    rows = generate_source(seed=2, count=4000, families=["sub"], levels=(2, 2))
    counts = Counter(row["planted"] for row in rows)
    assert counts["exact_dup"] == 200 and counts["near_dup"] == 200
    assert counts["contamination"] == 80 and counts["malformed"] == 80
    assert {row["family"] for row in rows if row["planted"] != "contamination"} == {"sub"}


def test_bad_source_parameters_are_rejected():
    bad = ({"levels": (0, 2)}, {"levels": (3, 2)}, {"families": ["div"]}, {"dup_rate": 0.9, "near_dup_rate": 0.2})
    for kwargs in bad:
        with pytest.raises(ValueError):
            generate_source(seed=0, count=100, **kwargs)
    with pytest.raises(ValueError, match="distinct"):
        generate_source(seed=0, count=500, levels=(1, 1), families=["sub"])


def test_parse_nano_uri():
    params = parse_nano_uri("nano://arith?levels=1-3&families=mul,add&dup_rate=0.1")
    assert params == {
        "levels": (1, 3),
        "families": ["add", "mul"],
        "dup_rate": 0.1,
        "near_dup_rate": 0.05,
        "contamination_rate": 0.02,
        "malformed_rate": 0.02,
    }
    assert parse_nano_uri("nano://arith?levels=2")["levels"] == (2, 2)
    assert generate_source(seed=0, count=50, **parse_nano_uri("nano://arith")) == generate_source(seed=0, count=50)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("nano://arith?levels=1-3&colour=red", "'colour'"),
        ("nano://arith?levels=1-3&levels=2", "twice"),
        ("nano://arith?levels=", "empty"),
        ("nano://arith?levels=a-b", "invalid value"),
        ("nano://arith?levels=1-9", "levels"),
        ("nano://arith?families=add,div", "families"),
        ("nano://arith?dup_rate=1.5", "dup_rate"),
        ("nano://geometry?levels=1", "nano://arith"),
        ("hf://arith?levels=1", "nano://arith"),
    ],
)
def test_parse_nano_uri_errors(uri, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_nano_uri(uri)


# ------------------------------------------------------------------- teachers


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return [row for row in generate_source(seed=7, count=3500, levels=(1, 4)) if row["planted"] is None][:3000]


@pytest.mark.parametrize("model", sorted(TEACHERS))
def test_teacher_error_rate_matches_its_spec(model, problems):
    rng = random.Random(model)
    wrong = 0
    for row in problems:
        text, finish = teachers.answer(model, row["problem"], rng)
        assert finish in ("stop", "length")
        if finish == "length":
            assert boxed(text) is None
        wrong += boxed(text) != row["answer"]
    spec = TEACHERS[model].error_rate
    tolerance = 4 * math.sqrt(spec * (1 - spec) / len(problems)) + 0.005
    assert abs(wrong / len(problems) - spec) < tolerance, (model, wrong / len(problems))


def test_teachers_are_deterministic_given_the_rng(problems):
    for model in TEACHERS:
        first = [teachers.answer(model, row["problem"], random.Random(9)) for row in problems[:300]]
        assert first == [teachers.answer(model, row["problem"], random.Random(9)) for row in problems[:300]]


def test_noisy_teacher_mistakes_are_mostly_systematic(problems):
    """Two samples of one problem repeat the same wrong answer most of the time."""
    rng = random.Random(0)
    repeated = wrong = 0
    for row in problems:
        first, second = (boxed(teachers.answer("nano-noisy", row["problem"], rng)[0]) for _ in range(2))
        if first != row["answer"]:
            wrong += 1
            repeated += first == second
    assert repeated / wrong > 0.75


def test_strong_teacher_mostly_matches_the_reference(problems):
    rng = random.Random(0)
    same = sum(
        teachers.answer("nano-strong", row["problem"], rng)[0] == reference_solution(row["problem"]) for row in problems
    )
    assert same / len(problems) > 0.95


def no_carry_rule(family: str, operands: tuple[int, int]) -> str:
    """The answer of someone who never adds carries nor subtracts borrows."""
    a, b = operands
    top, bottom = str(a)[::-1], str(b)[::-1].ljust(len(str(a)), "0")
    if family == "mul":
        columns = [int(x) * b % 10 for x in top]
    else:
        columns = [(int(x) + (1 if family == "add" else -1) * int(y)) % 10 for x, y in zip(top, bottom, strict=True)]
    return str(int("".join(map(str, reversed(columns)))))


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_carries_propagate_consistently(family):
    rng = random.Random(family)
    for _ in range(500):
        operands = random_operands(family, rng.randint(2, 5), rng)
        gold = gold_answer(family, operands)
        correct = work_columns(family, operands)
        none = work_columns(family, operands, Fault(dropped=frozenset(range(correct.columns + 1))))
        text = "\n".join([*none.lines, f"\\boxed{{{none.answer}}}"])
        written_digits(text)
        assert exact_arithmetic(text)
        assert none.answer == no_carry_rule(family, operands)
        assert (none.answer == gold) == (not correct.carried)
        for position in correct.carried:
            one = work_columns(family, operands, Fault(dropped=frozenset({position})))
            lost = int(gold) - int(one.answer)
            assert lost == (-(10**position) if family == "sub" else correct_carry(correct, position) * 10**position)


def correct_carry(trace, position: int) -> int:
    """The carry that enters `position` in a correct trace."""
    if position == trace.columns:
        return trace.digits[-1]
    return int(COLUMN.fullmatch(trace.lines[position])[9])


def test_noisy_teacher_learns_a_wrong_rule_in_consistent_traces(problems):
    """A large share of the noisy teacher's wrong answers follow the no-carry rule,
    each in a trace consistent line by line."""
    rng = random.Random(3)
    kinds: Counter[str] = Counter()
    for row in problems:
        text, _ = teachers.answer("nano-noisy", row["problem"], rng)
        family, operands = parse_problem(row["problem"])
        got = boxed(text)
        if got == row["answer"]:
            continue
        if got == no_carry_rule(family, operands):
            kinds["no_carry"] += 1
            written_digits(text)
        else:
            kinds["other"] += 1
    assert kinds["no_carry"] > 0.25 * (kinds["no_carry"] + kinds["other"])


def test_teachers_decline_what_they_cannot_parse():
    rng = random.Random(0)
    for model in TEACHERS:
        assert teachers.answer(model, "Tell me a joke.", rng) == (CANNOT_SOLVE, "stop")
    with pytest.raises(ValueError, match="nano-gigantic"):
        teachers.answer("nano-gigantic", "Compute 1 + 2.", rng)
    with pytest.raises(ValueError):
        TeacherSpec(0.1, {"forget_everything": 1.0})
