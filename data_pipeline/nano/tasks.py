"""Procedurally generated arithmetic problems: the nano track's data.

Three families (`add`: addition with carries, `sub`: subtraction with borrows and
a non-negative result, `mul`: a multi-digit number times a single digit), at
difficulty levels 1..5 (the number of digits of the operands). Problems are
short natural-language sentences; `reference_solution` works them column by
column, least significant digit first, one line per column, and ends with
`\\boxed{answer}`:

    Compute 347 + 589.  ->  7+9=16, write 6 carry 1
                            4+8+1=13, write 3 carry 1
                            3+5+1=9, write 9 carry 0
                            \\boxed{936}

`generate_source` makes a source with planted exact duplicates, near duplicates,
benchmark contamination and malformed rows, labelled in the `planted` column so
that curation stages can be scored. `nano_bench` is the fixed held-out
benchmark; no unplanted source row ever equals one of its problems.

Everything is deterministic for a seed, across processes (string seeds go
through SHA-512 in `random.Random`, not through Python's salted `hash`).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

FAMILIES: tuple[str, ...] = ("add", "sub", "mul")
MAX_LEVEL = 5
BENCH_SIZE = 200
BENCH_SEED = 20241
BENCH_LEVELS = (1, 2, 3)

# Each family's phrasings; `{a}` and `{b}` are the operands (a >= b for `sub`,
# b a single digit for `mul`). Every phrasing starts with a capital letter, so
# lower-casing always changes it (used by the near-duplicate perturbations).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": (
        "Compute {a} + {b}.",
        "What is {a} plus {b}?",
        "Find the sum of {a} and {b}.",
        "Add {a} and {b}.",
    ),
    "sub": (
        "Compute {a} - {b}.",
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "Find the difference between {a} and {b}.",
    ),
    "mul": (
        "Compute {a} * {b}.",
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "Find the product of {a} and {b}.",
    ),
}

PLANTED_KINDS: tuple[str, ...] = ("exact_dup", "near_dup", "contamination", "malformed")
MALFORMED_KINDS: tuple[str, ...] = ("missing_problem", "empty_problem", "missing_answer", "garbage", "huge")
HUGE_CHARS = 20_000  # a "huge" malformed problem is at least this long

# The parameters a `nano://arith` URI may set, with their defaults.
SOURCE_DEFAULTS: dict[str, Any] = {
    "levels": (1, 3),
    "families": list(FAMILIES),
    "dup_rate": 0.05,
    "near_dup_rate": 0.05,
    "contamination_rate": 0.02,
    "malformed_rate": 0.02,
}
_RATE_KEYS: dict[str, str] = {
    "dup_rate": "exact_dup",
    "near_dup_rate": "near_dup",
    "contamination_rate": "contamination",
    "malformed_rate": "malformed",
}
_MAX_TRIES = 64  # random draws per level before a (family, level) cell counts as exhausted

Operands = tuple[int, int]


# --------------------------------------------------------------------- problems


def _squash(text: str) -> str:
    """Whitespace removed, lower-cased, final punctuation dropped: what parsing compares."""
    return re.sub(r"\s+", "", text).lower().rstrip(".?!")


def _pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(_squash(template))
    return re.compile(escaped.replace(r"\{a\}", r"(?P<a>\d{1,9})").replace(r"\{b\}", r"(?P<b>\d{1,9})"))


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, _pattern(t)) for family, templates in PHRASINGS.items() for t in templates
)


def render_problem(family: str, operands: Operands, phrasing: int = 0) -> str:
    """The problem text of `family` on `operands` in phrasing number `phrasing`."""
    a, b = operands
    return PHRASINGS[family][phrasing].format(a=a, b=b)


def parse_problem(text: str) -> tuple[str, Operands] | None:
    """`(family, (a, b))` for any phrasing, whatever its case and whitespace; None
    when the text is not a supported problem (negative difference, multi-digit
    multiplier, unknown wording)."""
    squashed = _squash(text)
    for family, pattern in _PATTERNS:
        match = pattern.fullmatch(squashed)
        if match is None:
            continue
        a, b = int(match["a"]), int(match["b"])
        if (family == "sub" and a < b) or (family == "mul" and b > 9):
            return None
        return family, (a, b)
    return None


def gold_answer(family: str, operands: Operands) -> str:
    """The correct answer as a plain string."""
    a, b = operands
    return str({"add": a + b, "sub": a - b, "mul": a * b}[family])


def _key(family: str, operands: Operands) -> tuple[str, int, int]:
    """Identity of a problem: addition is commutative, so `a + b` is `b + a`."""
    a, b = sorted(operands) if family == "add" else operands
    return family, a, b


def _draw_operands(family: str, level: int, rng: random.Random) -> Operands:
    lo, hi = (0 if level == 1 else 10 ** (level - 1)), 10**level - 1
    a = rng.randint(lo, hi)
    if family == "mul":
        return a, rng.randint(2, 9)
    b = rng.randint(lo, hi)
    return (max(a, b), min(a, b)) if family == "sub" else (a, b)


def _draw_new(
    family: str, levels: list[int], rng: random.Random, taken: set[tuple[str, int, int]]
) -> tuple[int, Operands]:
    """A problem whose key is not in `taken` (which it joins), at the first level of
    `levels` whose cell is not exhausted; returns `(level, operands)`."""
    for level in levels:
        for _ in range(_MAX_TRIES):
            operands = _draw_operands(family, level, rng)
            key = _key(family, operands)
            if key not in taken:
                taken.add(key)
                return level, operands
    raise ValueError(f"cannot draw another distinct {family!r} problem at levels {levels}: ask for fewer rows")


# ----------------------------------------------------------------------- traces


@dataclass(frozen=True)
class Fault:
    """A mistake made while working the columns (the teachers' errors).

    `dropped`: positions whose incoming carry (or borrow) is ignored; position
    `columns` is the final carry. `digit`: `(column, d)` writes digit `d` in that
    column, the stated column value changing to match and the carry kept.
    """

    dropped: frozenset[int] = field(default_factory=frozenset)
    digit: tuple[int, int] | None = None


@dataclass(frozen=True)
class Trace:
    """A worked problem: one line per column, then the final carry if any."""

    lines: tuple[str, ...]
    digits: tuple[int, ...]  # the written digits, least significant first
    columns: int
    carried: tuple[int, ...]  # positions that received a non-zero carry or borrow

    @property
    def answer(self) -> str:
        """The number the written digits spell (most significant first)."""
        return str(int("".join(map(str, reversed(self.digits)))))


def work_columns(family: str, operands: Operands, fault: Fault = Fault()) -> Trace:
    """Work `operands` column by column, least significant first, making `fault`.

    Every line is consistent with the lines before it: a dropped carry or a wrong
    digit propagates into the later columns and the answer.
    """
    a, b = operands
    top = [int(c) for c in reversed(str(a))]
    bottom = [int(c) for c in reversed(str(b))]
    columns = len(top) if family == "mul" else max(len(top), len(bottom))
    top += [0] * (columns - len(top))
    bottom += [0] * (columns - len(bottom))
    word = "borrow" if family == "sub" else "carry"
    # The trace starts by restating the operands: a small student copies a
    # number as a whole far more easily than it finds "the k-th digit from the
    # right" in free text, and the column lines can then read the restatement.
    lines: list[str] = [f"{a}{ {'add': '+', 'sub': '-', 'mul': '*'}[family] }{b}"]
    digits: list[int] = []
    carried: list[int] = []
    carry = 0
    for i in range(columns):
        if carry:
            carried.append(i)
        cin = 0 if i in fault.dropped else carry
        x, y = top[i], bottom[i]
        if family == "sub":
            borrow = int(x - y - cin < 0)
            expr = f"{x + 10 * borrow}-{y}" + (f"-{cin}" if cin else "")
            value = x + 10 * borrow - y - cin
        else:
            expr = (f"{x}+{y}" if family == "add" else f"{x}*{b}") + (f"+{cin}" if cin else "")
            value = x + y + cin if family == "add" else x * b + cin
        digit = value % 10
        if fault.digit is not None and fault.digit[0] == i:
            value += fault.digit[1] - digit
            digit = fault.digit[1]
        carry = borrow if family == "sub" else value // 10
        lines.append(f"{expr}={value}, write {digit} {word} {carry}")
        digits.append(digit)
    if carry and family != "sub":
        carried.append(columns)
        if columns not in fault.dropped:
            lines.append(f"write {carry}")
            digits.append(carry)
    return Trace(tuple(lines), tuple(digits), columns, tuple(carried))


def render_solution(lines: tuple[str, ...] | list[str], answer: str) -> str:
    """Trace lines followed by the boxed answer."""
    return "\n".join([*lines, f"\\boxed{{{answer}}}"])


def reference_solution(problem_text: str) -> str:
    """The correct digit-by-digit trace of a problem, ending with `\\boxed{answer}`."""
    parsed = parse_problem(problem_text)
    if parsed is None:
        raise ValueError(f"not a nano arithmetic problem: {problem_text!r}")
    trace = work_columns(*parsed)
    return render_solution(trace.lines, trace.answer)


# ---------------------------------------------------------------------- bench


@lru_cache(maxsize=8)
def _bench(n: int, seed: int) -> tuple[tuple[str, int, Operands, int], ...]:
    """(family, level, operands, phrasing) of each bench item; cells round-robin."""
    rng = random.Random(f"nano-bench:{seed}")
    cells = [(family, level) for level in BENCH_LEVELS for family in FAMILIES]
    taken: set[tuple[str, int, int]] = set()
    items = []
    for i in range(n):
        family, level = cells[i % len(cells)]
        _, operands = _draw_new(family, [level], rng, taken)
        items.append((family, level, operands, rng.randrange(len(PHRASINGS[family]))))
    return tuple(items)


def nano_bench(n: int = BENCH_SIZE, seed: int = BENCH_SEED) -> list[dict[str, Any]]:
    """The fixed held-out benchmark: `n` distinct problems over every family and
    levels 1..3, ids `nano-bench/0001`..., identical across calls and processes."""
    return [
        {
            "id": f"nano-bench/{i + 1:04d}",
            "problem": render_problem(family, operands, phrasing),
            "answer": gold_answer(family, operands),
            "family": family,
            "level": level,
        }
        for i, (family, level, operands, phrasing) in enumerate(_bench(n, seed))
    ]


# --------------------------------------------------------------------- source


def _perturb(text: str, rng: random.Random) -> str:
    """The same text with changed case or whitespace (never identical)."""
    how = rng.randrange(4)
    if how == 0:
        return text.lower()
    if how == 1:
        return text.upper()
    if how == 2:
        spaces = [i for i, c in enumerate(text) if c == " "]
        i = rng.choice(spaces)
        return text[:i] + "  " + text[i + 1 :]
    return rng.choice(["  ", "\t", "\n"]) + text + rng.choice([" ", "\n", "\n\n"])


def _malformed(problem: str, answer: str, rng: random.Random) -> tuple[str | None, str | None]:
    kind = rng.choice(MALFORMED_KINDS)
    if kind == "missing_problem":
        return None, answer
    if kind == "empty_problem":
        return rng.choice(["", " ", "\n"]), answer
    if kind == "missing_answer":
        return problem, None
    if kind == "garbage":
        alphabet = string.ascii_letters + string.digits + string.punctuation + "     "
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 80))), answer
    return " ".join([problem] * (HUGE_CHARS // len(problem) + 1)), answer


def _checked(
    levels: tuple[int, int], families: list[str] | None, rates: dict[str, float]
) -> tuple[tuple[int, int], list[str]]:
    """Validated `(levels, families)`, families in canonical order; raises ValueError."""
    lo, hi = levels
    if not 1 <= lo <= hi <= MAX_LEVEL:
        raise ValueError(f"levels must satisfy 1 <= lo <= hi <= {MAX_LEVEL}, got {levels}")
    chosen = list(FAMILIES) if families is None else list(families)
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown or not chosen:
        raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)}, got {chosen}")
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    if sum(rates.values()) >= 1.0:
        raise ValueError(f"planted rates must sum to less than 1, got {sum(rates.values())}")
    return (lo, hi), [f for f in FAMILIES if f in chosen]


def generate_source(
    *,
    seed: int,
    count: int,
    levels: tuple[int, int] = SOURCE_DEFAULTS["levels"],
    families: list[str] | None = None,
    dup_rate: float = SOURCE_DEFAULTS["dup_rate"],
    near_dup_rate: float = SOURCE_DEFAULTS["near_dup_rate"],
    contamination_rate: float = SOURCE_DEFAULTS["contamination_rate"],
    malformed_rate: float = SOURCE_DEFAULTS["malformed_rate"],
) -> list[dict[str, Any]]:
    """`count` rows `{problem, answer, family, level, planted}`, deterministic for `seed`.

    `round(rate * count)` rows of each planted kind sit at seeded positions (never
    the first row). Unplanted rows are pairwise distinct and never a bench
    problem; a `(family, level)` cell that runs out of distinct problems (level 1
    has a few dozen) spills into the other levels in range, in random order. `exact_dup` and
    `near_dup` copy an earlier unplanted row; `contamination` copies a
    `nano_bench()` item verbatim or with changed whitespace or case; `malformed`
    rows lack a problem or an answer, or have garbage or huge problem text.
    """
    rates = {
        "dup_rate": dup_rate,
        "near_dup_rate": near_dup_rate,
        "contamination_rate": contamination_rate,
        "malformed_rate": malformed_rate,
    }
    (lo, hi), chosen = _checked(levels, families, rates)
    rng = random.Random(f"nano-source:{seed}")
    planted = [kind for name, kind in _RATE_KEYS.items() for _ in range(round(rates[name] * count))]
    if len(planted) > max(count - 1, 0):
        raise ValueError(f"{len(planted)} planted rows do not fit in {count} rows")
    at = dict(zip(rng.sample(range(1, count), len(planted)), planted, strict=True))

    bench = _bench(BENCH_SIZE, BENCH_SEED)
    taken = {_key(family, operands) for family, _, operands, _ in bench}
    clean: list[tuple[str, int, Operands, int]] = []
    rows: list[dict[str, Any]] = []

    def fresh() -> tuple[str, int, Operands, int]:
        family = rng.choice(chosen)
        order = list(range(lo, hi + 1))
        rng.shuffle(order)
        level, operands = _draw_new(family, order, rng, taken)
        return family, level, operands, rng.randrange(len(PHRASINGS[family]))

    for position in range(count):
        kind = at.get(position)
        if kind in ("exact_dup", "near_dup"):
            family, level, operands, phrasing = rng.choice(clean)
            problem = render_problem(family, operands, phrasing)
            if kind == "near_dup":
                others = [p for p in range(len(PHRASINGS[family])) if p != phrasing]
                rephrase = rng.random() < 0.5
                problem = render_problem(family, operands, rng.choice(others)) if rephrase else _perturb(problem, rng)
            answer: str | None = gold_answer(family, operands)
            text: str | None = problem
        elif kind == "contamination":
            family, level, operands, phrasing = rng.choice(bench)
            problem = render_problem(family, operands, phrasing)
            text = problem if rng.random() < 0.5 else _perturb(problem, rng)
            answer = gold_answer(family, operands)
        else:
            family, level, operands, phrasing = fresh()
            text, answer = render_problem(family, operands, phrasing), gold_answer(family, operands)
            if kind == "malformed":
                text, answer = _malformed(text, answer, rng)
            else:
                clean.append((family, level, operands, phrasing))
        rows.append({"problem": text, "answer": answer, "family": family, "level": level, "planted": kind})
    return rows


def parse_nano_uri(uri: str) -> dict[str, Any]:
    """The `generate_source` parameters of a `nano://arith?...` URI, defaults filled in.

    Keys: `levels` (`2` or `1-3`), `families` (comma-separated), and the four
    rates. Unknown or repeated keys, empty or invalid values raise ValueError.
    """
    parts = urlsplit(uri)
    if parts.scheme != "nano" or parts.netloc != "arith" or parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"expected nano://arith?key=value&..., got {uri!r}")
    params = dict(SOURCE_DEFAULTS)
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in SOURCE_DEFAULTS:
            raise ValueError(f"unknown key {key!r} in {uri!r}; known keys: {sorted(SOURCE_DEFAULTS)}")
        if key in seen:
            raise ValueError(f"key {key!r} given twice in {uri!r}")
        seen.add(key)
        if not value:
            raise ValueError(f"key {key!r} has an empty value in {uri!r}")
        try:
            if key == "levels":
                lo, _, hi = value.partition("-")
                params[key] = (int(lo), int(hi or lo))
            elif key == "families":
                params[key] = value.split(",")
            else:
                params[key] = float(value)
        except ValueError as err:
            raise ValueError(f"invalid value {value!r} for key {key!r} in {uri!r}") from err
    params["levels"], params["families"] = _checked(
        params["levels"], params["families"], {k: params[k] for k in _RATE_KEYS}
    )
    return params
