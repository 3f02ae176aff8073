"""Programmatic teachers of different strength for the nano track.

A teacher reads only the problem text (like a real one), works it with
`tasks.work_columns` and, at its error rate, makes one mistake of a kind drawn
from its mix:

- systematic (a misconception, fixed per teacher and problem, so every sample
  of that problem repeats it): `drop_carry_all` (carries and borrows never
  added), `drop_carry_one` (one forgotten), `off_by_one` (units column off by
  one), `reversed` (the answer's digits in written, least-significant-first
  order), `sign` (a difference given a minus sign);
- random (drawn per sample from the caller's rng): `random_digit` (one column
  miscomputed), `truncate` (cut before the box, finish_reason "length"),
  `missing_box` (the answer stated without `\\boxed{}`).

Column mistakes are consistent inside the trace: the wrong value is carried
into the later columns and the boxed answer, so a student trained on unverified
answers learns the wrong rule. Every mistake makes the strictly extracted boxed
answer differ from the gold one (or be absent); a kind that would not (no carry
to drop, a palindromic answer, a sign on a sum) gives way to another.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from data_pipeline.nano.tasks import Fault, Operands, Trace, parse_problem, render_solution, work_columns

SYSTEMATIC_KINDS: tuple[str, ...] = ("drop_carry_all", "drop_carry_one", "off_by_one", "reversed", "sign")
RANDOM_KINDS: tuple[str, ...] = ("random_digit", "truncate", "missing_box")
CANNOT_SOLVE = "I cannot solve this."

Response = tuple[str, str]  # (text, finish_reason)


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher: the probability `error_rate` that an answer is wrong, unboxed or
    truncated, and the relative weights `kinds` of its error kinds."""

    error_rate: float
    kinds: Mapping[str, float]

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        unknown = sorted(set(self.kinds) - set(SYSTEMATIC_KINDS) - set(RANDOM_KINDS))
        if unknown or any(w < 0 for w in self.kinds.values()) or not sum(self.kinds.values()) > 0:
            raise ValueError(f"kinds must give non-negative weights to known error kinds, got {dict(self.kinds)}")

    def rate(self, group: tuple[str, ...]) -> float:
        """The probability of an error of a kind in `group`."""
        return self.error_rate * sum(self.kinds.get(k, 0.0) for k in group) / sum(self.kinds.values())


TEACHERS: dict[str, TeacherSpec] = {
    "nano-strong": TeacherSpec(0.02, {"off_by_one": 1, "random_digit": 2, "truncate": 1, "missing_box": 1}),
    "nano-noisy": TeacherSpec(
        0.40,
        {
            "drop_carry_all": 4,
            "drop_carry_one": 2,
            "off_by_one": 1,
            "reversed": 1,
            "sign": 0.5,
            "random_digit": 1,
            "truncate": 0.25,
            "missing_box": 0.25,
        },
    ),
    "nano-weak": TeacherSpec(
        0.70,
        {
            "drop_carry_all": 3,
            "drop_carry_one": 2,
            "off_by_one": 1,
            "reversed": 1.5,
            "sign": 1,
            "random_digit": 3,
            "truncate": 1,
            "missing_box": 0.5,
        },
    ),
}


# Each maker returns a wrong response, or None when its kind cannot make this
# problem's answer wrong.
Maker = Callable[[str, Operands, Trace, random.Random], Response | None]


def _rewritten(family: str, operands: Operands, fault: Fault, correct: Trace) -> Response | None:
    wrong = work_columns(family, operands, fault)
    return None if wrong.answer == correct.answer else (render_solution(wrong.lines, wrong.answer), "stop")


def _drop_carry_all(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    return _rewritten(family, operands, Fault(dropped=frozenset(range(trace.columns + 1))), trace)


def _drop_carry_one(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    if not trace.carried:
        return None
    return _rewritten(family, operands, Fault(dropped=frozenset({rng.choice(trace.carried)})), trace)


def _off_by_one(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    units = trace.digits[0]
    digit = rng.choice([d for d in (units - 1, units + 1) if 0 <= d <= 9])
    return _rewritten(family, operands, Fault(digit=(0, digit)), trace)


def _random_digit(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    column = rng.randrange(trace.columns)
    digit = rng.choice([d for d in range(10) if d != trace.digits[column]])
    return _rewritten(family, operands, Fault(digit=(column, digit)), trace)


def _reversed(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    written_order = str(int("".join(map(str, trace.digits))))
    return None if written_order == trace.answer else (render_solution(trace.lines, written_order), "stop")


def _sign(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    if family != "sub" or trace.answer == "0":
        return None
    return render_solution(trace.lines, f"-{trace.answer}"), "stop"


def _truncate(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    body = "\n".join(trace.lines)
    return body[: rng.randrange(1, len(body))], "length"


def _missing_box(family: str, operands: Operands, trace: Trace, rng: random.Random) -> Response | None:
    return "\n".join([*trace.lines, f"The answer is {trace.answer}."]), "stop"


_MAKERS: dict[str, Maker] = {
    "drop_carry_all": _drop_carry_all,
    "drop_carry_one": _drop_carry_one,
    "off_by_one": _off_by_one,
    "reversed": _reversed,
    "sign": _sign,
    "random_digit": _random_digit,
    "truncate": _truncate,
    "missing_box": _missing_box,
}


def _mistake(
    group: tuple[str, ...],
    fallback: str,
    spec: TeacherSpec,
    family: str,
    operands: Operands,
    trace: Trace,
    rng: random.Random,
) -> Response:
    """A wrong response of a kind in `group`: the teacher's kinds tried in a weighted
    random order, then `fallback`, which always applies."""
    weights = {k: spec.kinds[k] for k in group if spec.kinds.get(k, 0.0) > 0}
    order: list[str] = []
    while weights:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        order.append(kind)
        del weights[kind]
    for kind in [*order, fallback]:
        response = _MAKERS[kind](family, operands, trace, rng)
        if response is not None:
            return response
    raise AssertionError("the fallback kinds always make a mistake")


def answer(model: str, problem_text: str, rng: random.Random) -> Response:
    """`(text, finish_reason)` of teacher `model` on a problem; deterministic given `rng`.

    Whether a systematic mistake is made (and which) depends only on the teacher
    and the problem; random mistakes are drawn from `rng`. Text that is not a
    nano problem gets `CANNOT_SOLVE`.
    """
    if model not in TEACHERS:
        raise ValueError(f"unknown nano teacher {model!r}; known: {sorted(TEACHERS)}")
    spec = TEACHERS[model]
    parsed = parse_problem(problem_text)
    if parsed is None:
        return CANNOT_SOLVE, "stop"
    family, operands = parsed
    trace = work_columns(family, operands)
    misconception = random.Random(f"{model}|{family}|{operands[0]}|{operands[1]}")
    systematic = spec.rate(SYSTEMATIC_KINDS)
    if misconception.random() < systematic:
        return _mistake(SYSTEMATIC_KINDS, "off_by_one", spec, family, operands, trace, misconception)
    if rng.random() * (1.0 - systematic) < spec.rate(RANDOM_KINDS):
        return _mistake(RANDOM_KINDS, "random_digit", spec, family, operands, trace, rng)
    return render_solution(trace.lines, trace.answer), "stop"
