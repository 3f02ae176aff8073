"""`verify`: judge every teacher sample, and choose which samples go into the
SFT data.

Methods:
- `math`: math-verify against the reference answer, in worker processes with a
  wall-clock deadline per sample (eval.scoring.score_many). The reference is the
  gold answer (`reference: gold`); for sources without one, `majority` takes
  the answer most of the teacher's samples agree on (equivalence by
  math-verify, at least `min_agreement` of the samples), and
  `gold_or_majority` uses the gold where there is one. A row verified against a
  majority records it in `meta.reference` (kind, answer, votes, samples).
- `multiple_choice`: the option letter (eval.scoring.extract_choice, which never
  reads letters out of words) against the gold letter.
- `code`: the program in the sample's last fenced code block run against the
  row's tests in the sandbox (eval.sandbox); the tests come from the row's
  `meta` field `tests_field` (or several fields, whose cases are joined) and
  are first parsed into a typed suite (`parse_tests`): a Python test script
  (assert statements, a HumanEval `check` function), stdin/stdout cases
  (CodeContests, open-r1's `verification_info`, APPS/TACO) or function-call
  cases (`fn_name`). A field in no known format is not run: its samples stay
  `unverified` (extracted `unknown_test_format`) and the row is dropped with
  that reason unless `keep: all`. At most `max_tests` stdin/stdout or call
  cases run per problem (the first ones).

Every sample keeps its verdict (correct | incorrect | no_answer | truncated |
timeout | error | unverified) and the extracted answer. `keep: correct` selects
only correct samples and drops questions with none; `any_correct` keeps every
finished sample of a question that has at least one correct one; `all` keeps
everything (verification off, verdicts still recorded so the card shows the
teacher's accuracy). Selection only narrows what earlier stages selected.
Questions without a reference are dropped unless `keep: all`.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from data_pipeline.fingerprint import canonical_json, sha256_hex
from data_pipeline.kvstore import KVStore
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class VerifyParams(OpParams):
    method: Literal["math", "multiple_choice", "code"] = "math"
    keep: Literal["correct", "any_correct", "all"] = "correct"
    reference: Literal["gold", "majority", "gold_or_majority"] = "gold"
    min_agreement: float = Field(default=0.5, gt=0, le=1)  # majority: share of samples that must agree
    timeout_s: float = Field(default=5.0, gt=0)  # per math sample; per test for code
    letters: str = Field(default="ABCD", pattern=r"^[A-Z]{2,26}$")  # multiple_choice
    tests_field: str | list[str] = "tests"  # code: the meta field(s) holding the tests
    total_timeout_s: float = Field(default=60.0, gt=0)  # code: per program
    max_tests: int = Field(default=20, ge=1)  # code: stdin/stdout or call cases run per problem (the first)

    def unhashed_fields(self) -> tuple[str, ...]:
        """`max_tests` changes nothing unless code is run: keep math and multiple-choice
        stages' fingerprints (and caches) as they were before it existed."""
        return () if self.method == "code" else ("max_tests",)

    @model_validator(mode="after")
    def _majority_is_math(self) -> "VerifyParams":
        if self.reference != "gold" and self.method == "code":
            raise ValueError("majority references apply to math and multiple_choice answers, not to code")
        return self


def _scorer_version() -> str:
    import math_verify

    from eval.harness import HARNESS_VERSION

    return f"math-verify {getattr(math_verify, '__version__', '?')}; harness {HARNESS_VERSION}"


def cached_scores(pairs: list[tuple[str, str]], params: VerifyParams, ctx: OpContext):
    """Scores of (gold, response) pairs, each computed once: a verdict is a pure
    function of the pair and the scorer, so an ablation that only changes the
    `keep` policy (or a rerun) reads them from `<cache>/verdicts.sqlite`.
    Timeouts are not stored, so a rerun tries them again."""
    from eval.scoring import Score, score_many

    version = _scorer_version()
    keys = [sha256_hex(canonical_json([version, params.method, g, r])) for g, r in pairs]
    store = KVStore(ctx.cache_root / "verdicts.sqlite", "verdicts")
    try:
        found = {k: Score(*v) for k, v in store.get_many(keys).items()}
        missing = [i for i, k in enumerate(keys) if k not in found]
        fresh = score_many([pairs[i] for i in missing], workers=ctx.workers, timeout_s=params.timeout_s)
        store.put_many([(keys[i], list(sc)) for i, sc in zip(missing, fresh) if sc.status != "timeout"])
    finally:
        store.close()
    cached = len(keys) - len(missing)
    found.update({keys[i]: sc for i, sc in zip(missing, fresh)})
    return [found[k] for k in keys], cached


def _verdict(correct: bool, extracted: str | None, status: str, finish_reason: str) -> str:
    verdict = "correct" if correct else ("timeout" if status == "timeout" else
                                         "no_answer" if extracted is None else "incorrect")
    return "truncated" if finish_reason == "length" and verdict == "correct" else verdict


def _math_majority(rows: list[dict], todo_rows: list[int], params: VerifyParams, ctx: OpContext,
                   stats: dict[str, float]) -> dict[int, dict]:
    """Majority references for rows without gold: each sample's boxed answer is
    a candidate; every sample is scored against every distinct candidate of its
    question (cached like any verdict); the candidate most samples agree with
    wins, ties to the earliest sample. Returns row index -> reference."""
    from eval.scoring import answer_region, last_boxed

    pairs, owners = [], []
    candidates: dict[int, list[str]] = {}
    for i in todo_rows:
        texts = [x["text"] or "" for x in rows[i]["responses"] if x["finish_reason"] == "stop"]
        cands = list(dict.fromkeys(c for c in (last_boxed(answer_region(t)) for t in texts) if c))
        candidates[i] = cands
        for c_index, cand in enumerate(cands):
            for t in texts:
                pairs.append((cand, t))
                owners.append((i, c_index))
    scores, cached = cached_scores(pairs, params, ctx)
    stats["verdicts_scored"] = stats.get("verdicts_scored", 0) + len(scores) - cached
    stats["verdicts_cached"] = stats.get("verdicts_cached", 0) + cached
    votes: dict[tuple[int, int], int] = Counter()
    for owner, sc in zip(owners, scores):
        votes[owner] += bool(sc.correct)
    refs = {}
    for i, cands in candidates.items():
        n = sum(1 for x in rows[i]["responses"] if x["finish_reason"] != "error")
        if not cands or not n:
            continue
        best = max(range(len(cands)), key=lambda c: (votes[(i, c)], -c))
        if votes[(i, best)] / n >= params.min_agreement:
            refs[i] = {"kind": "majority", "answer": cands[best], "votes": votes[(i, best)], "samples": n}
    return refs


def _majority_choice(rows: list[dict], todo_rows: list[int], params: VerifyParams) -> dict[int, dict]:
    from eval.scoring import extract_choice

    refs = {}
    for i in todo_rows:
        picks = [extract_choice(x["text"] or "", params.letters) for x in rows[i]["responses"]
                 if x["finish_reason"] != "error"]
        counted = Counter(p for p in picks if p)
        if counted and picks:
            letter, n = max(counted.items(), key=lambda kv: (kv[1], -ord(kv[0])))
            if n / len(picks) >= params.min_agreement:
                refs[i] = {"kind": "majority", "answer": letter, "votes": n, "samples": len(picks)}
    return refs


def _references(rows: list[dict], params: VerifyParams, ctx: OpContext, stats: dict[str, float]) -> dict[int, dict]:
    """row index -> {"kind": "gold"|"majority", "answer": ...} for rows that have one."""
    refs: dict[int, dict] = {}
    if params.reference in ("gold", "gold_or_majority"):
        refs = {i: {"kind": "gold", "answer": r["answer"]} for i, r in enumerate(rows) if (r.get("answer") or "").strip()}
    if params.reference in ("majority", "gold_or_majority"):
        todo = [i for i in range(len(rows)) if i not in refs]
        majority = _math_majority(rows, todo, params, ctx, stats) if params.method == "math" else \
            _majority_choice(rows, todo, params)
        refs.update(majority)
        stats["reference/majority"] = len(majority)
        stats["reference/no_majority"] = len(todo) - len(majority)
    return refs


def _judge_math(rows, refs, params, ctx, stats) -> None:
    todo = [(x, refs[i]["answer"]) for i, r in enumerate(rows) if i in refs
            for x in r["responses"] if x["finish_reason"] != "error"]
    scores, cached = cached_scores([(ref, x["text"] or "") for x, ref in todo], params, ctx)
    stats["verdicts_scored"] = stats.get("verdicts_scored", 0) + len(scores) - cached
    stats["verdicts_cached"] = stats.get("verdicts_cached", 0) + cached
    for (x, _), sc in zip(todo, scores):
        x["verdict"], x["extracted"] = _verdict(sc.correct, sc.extracted, sc.status, x["finish_reason"]), sc.extracted


def _judge_choice(rows, refs, params) -> None:
    from eval.scoring import extract_choice

    for i, r in enumerate(rows):
        if i not in refs:
            continue
        gold = refs[i]["answer"].strip().strip("()").upper()
        for x in r["responses"]:
            if x["finish_reason"] == "error":
                continue
            pick = extract_choice(x["text"] or "", params.letters)
            x["verdict"], x["extracted"] = _verdict(pick == gold, pick, "ok", x["finish_reason"]), pick


class UnknownTestFormat(ValueError):
    """A tests field in none of the formats `parse_tests` reads."""


@dataclass
class TestSuite:
    """A row's tests, typed. kind "python": `tests` is a test script or a list of
    assert statements (with HumanEval's `entry_point`, MBPP's `setup`); "io": `cases`
    are (stdin, expected stdout) strings; "call": `cases` are (arguments, expected
    return value) for the function `fn_name`, the arguments a list (positional) or a
    dict (keyword)."""

    __test__ = False  # not a pytest class

    kind: Literal["python", "io", "call"]
    tests: str | list[str] | None = None
    entry_point: str | None = None
    setup: str = ""
    cases: list[tuple[Any, Any]] = field(default_factory=list)
    fn_name: str | None = None
    float_tol: float | None = None


_IO_TYPES = {None, "stdin_stdout", "stdin", "standard_io"}
_CALL_TYPES = {"function_call", "functional", "call_based"}


def _is_python_tests(src: str) -> bool:
    """Python source with at least one `assert` statement (anywhere, e.g. in `check`)."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(n, ast.Assert) for n in ast.walk(tree))


def _text(v: Any, what: str) -> str:
    """A stdin or stdout value: a string, a list of lines (APPS), or a number."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "\n".join(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise UnknownTestFormat(f"{what} is a {type(v).__name__}, not text")


def _call_args(v: Any) -> list | dict:
    """Arguments of a call case: a list (positional) or dict (keyword) of JSON values, or
    JSON text of one, or JSON values one per line (LiveCodeBench's functional tests)."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            try:
                v = [json.loads(line) for line in v.splitlines() if line.strip()]
            except (ValueError, RecursionError):
                raise UnknownTestFormat("call arguments are neither JSON nor JSON lines") from None
    if not isinstance(v, (list, dict)):
        raise UnknownTestFormat(f"call arguments are a {type(v).__name__}, not a list or dict")
    return v


def _cases(inputs: list, outputs: list, fn_name: str | None, types: list | None = None) -> TestSuite:
    if len(inputs) != len(outputs):
        raise UnknownTestFormat(f"{len(inputs)} inputs but {len(outputs)} outputs")
    types = [t if t is None or isinstance(t, str) else repr(t) for t in types or [None] * len(inputs)]
    unknown = {t for t in types if t not in _IO_TYPES | _CALL_TYPES}
    if unknown:
        raise UnknownTestFormat(f"unknown test type {sorted(map(str, unknown))[0]!r}")
    declared = {"call" if t in _CALL_TYPES else "io" for t in types if t is not None}
    if len(declared) > 1:
        raise UnknownTestFormat("stdin/stdout and function-call cases mixed")
    # a case type decides; without one, a fn_name makes call cases
    kind = declared.pop() if declared else "call" if fn_name else "io"
    if kind == "call":
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise UnknownTestFormat(f"function-call cases without a valid fn_name ({fn_name!r})")
        cases = []
        for i, o in zip(inputs, outputs):
            serialized = isinstance(i, str)
            args = _call_args(i)
            if serialized and isinstance(o, str):  # a case stored as JSON text: so is its output
                try:
                    o = json.loads(o)
                except (ValueError, RecursionError):
                    pass
            cases.append((args, o))
        return TestSuite("call", cases=cases, fn_name=fn_name)
    return TestSuite("io", cases=[(_text(i, "an input"), _text(o, "an output"))
                                  for i, o in zip(inputs, outputs)])


def _parse(value: Any, depth: int = 0) -> TestSuite | None:
    if depth > 3:
        raise UnknownTestFormat("nested too deep")
    if value is None or (isinstance(value, (str, list, dict)) and not value):
        return None
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except RecursionError:
            raise UnknownTestFormat("JSON nested too deep") from None
        except ValueError:
            if _is_python_tests(value):
                return TestSuite("python", tests=value)
            raise UnknownTestFormat("a string that is neither JSON nor Python with assert statements") from None
        return _parse(decoded, depth + 1)
    if isinstance(value, list):
        if all(isinstance(t, str) for t in value):
            if all(_is_python_tests(t) for t in value):
                return TestSuite("python", tests=list(value))
            raise UnknownTestFormat("a list of strings that are not all assert statements")
        if all(isinstance(c, dict) and "input" in c and "output" in c for c in value):
            return _cases([c["input"] for c in value], [c["output"] for c in value],
                          next((c["fn_name"] for c in value if c.get("fn_name")), None),
                          [c.get("type", c.get("testtype")) for c in value])
        if all(isinstance(c, (list, tuple)) and len(c) == 2 for c in value):
            return _cases([c[0] for c in value], [c[1] for c in value], None)
        raise UnknownTestFormat("a list of neither assert statements nor cases")
    if not isinstance(value, dict):
        raise UnknownTestFormat(f"a {type(value).__name__}")
    lang = value.get("language")
    if lang is not None and str(lang).lower() not in ("python", "python3", "py"):
        raise UnknownTestFormat(f"tests for language {lang!r}")
    fn_name = value.get("fn_name") or value.get("func_name")
    if "tests" in value:  # {"tests", "entry_point"?, "setup"?}: the pre-parser wrapper
        inner = _parse(value["tests"], depth + 1)
        if inner is not None and inner.kind == "python":
            inner.entry_point = value.get("entry_point") or None
            inner.setup = str(value.get("setup") or "")
        return inner
    if "functional" in value and isinstance(value["functional"], str):  # rllm's LeetCode tests
        return _parse(value["functional"], depth + 1)
    if "cases" in value:  # {"cases": [[input, output], ...], "float_tol"?}
        suite = _parse(value["cases"], depth + 1)
        if suite is not None and suite.kind == "python":
            raise UnknownTestFormat("`cases` holding assert statements")
        if suite is not None and isinstance(value.get("float_tol"), (int, float)):
            suite.float_tol = float(value["float_tol"])
        return suite
    if "test_cases" in value:  # open-r1: {"language", "test_cases": [{input, output, type, fn_name?}]}
        cases = value["test_cases"]
        if isinstance(cases, str):
            try:
                cases = json.loads(cases)
            except (ValueError, RecursionError):
                raise UnknownTestFormat("test_cases is a string that is not JSON") from None
        if not isinstance(cases, list) or not all(isinstance(c, dict) and "input" in c and "output" in c
                                                  for c in cases):
            raise UnknownTestFormat("test_cases is not a list of {input, output}")
        if not cases:
            return None
        return _cases([c["input"] for c in cases], [c["output"] for c in cases],
                      fn_name or next((c["fn_name"] for c in cases if c.get("fn_name")), None),
                      [c.get("type", c.get("testtype")) for c in cases])
    for ki, ko in (("input", "output"), ("inputs", "outputs")):  # CodeContests; APPS/TACO
        if ki in value and ko in value:
            ins, outs = value[ki], value[ko]
            if not isinstance(ins, list) or not isinstance(outs, list):
                raise UnknownTestFormat(f"{ki}/{ko} are not lists")
            return _cases(ins, outs, fn_name) if ins or outs else None
    raise UnknownTestFormat(f"a dict with keys {sorted(map(str, value))[:6]}")


def parse_tests(value: Any) -> TestSuite | None:
    """The typed test suite of a tests field, None when it holds no tests; raises
    UnknownTestFormat for anything else (which is then never run).

    - A string is JSON-decoded first. Only a string that is not JSON, parses as Python
      and contains an `assert` statement is a test script (e.g. asserts, or HumanEval's
      `def check(candidate)`); any other string is unknown.
    - A list of strings, each Python with an assert: MBPP's assert statements.
    - stdin/stdout: a list of {"input", "output"} (rllm/DeepCoder), a list of
      [input, output] pairs, {"cases": [...]}, {"input": [...], "output": [...]}
      (CodeContests), {"inputs": [...], "outputs": [...]} without fn_name (APPS/TACO),
      {"language": "python", "test_cases": [{"input", "output", "type": "stdin_stdout"}]}
      (open-r1). Inputs and outputs are strings (or lists of lines).
    - function call: the same shapes with a `fn_name` (top level or per case) and/or
      cases of type "function_call" / "functional"; the inputs are the arguments.
    - {"tests": ..., "entry_point"?, "setup"?} wraps any of these.
    Mixed stdin and call cases, mismatched input/output counts, or a language other
    than Python are unknown."""
    return _parse(value)


def load_tests(meta: dict, fields: list[str]) -> TestSuite | None:
    """The suite of a row from one or several meta fields; cases of several fields (e.g.
    CodeContests' public_tests, private_tests, generated_tests) are joined in order."""
    suites = [s for s in (parse_tests(meta.get(f)) for f in fields) if s is not None]
    if len(suites) <= 1:
        return suites[0] if suites else None
    first = suites[0]
    if any(s.kind == "python" for s in suites) or any((s.kind, s.fn_name) != (first.kind, first.fn_name)
                                                      for s in suites):
        raise UnknownTestFormat("fields with different kinds of tests cannot be joined")
    first.cases = [c for s in suites for c in s.cases]
    return first


def _code_job(suite: TestSuite, program: str, params: VerifyParams) -> dict:
    """One item of eval.sandbox.score_code_many."""
    if suite.kind == "python":
        job: dict[str, Any] = {"program": program, "tests": suite.tests}
        if suite.entry_point:
            job["entry_point"] = suite.entry_point
        if suite.setup:
            job["setup"] = suite.setup
        return job
    job = {"program": program, "cases": suite.cases[: params.max_tests]}
    if suite.float_tol is not None:
        job["float_tol"] = suite.float_tol
    if suite.kind == "call":
        job["fn_name"] = suite.fn_name
    else:
        job["exact_ints"] = True
    return job


def _judge_code(rows, refs, params, ctx, stats) -> dict[int, str]:
    """Code verdicts; returns row index -> why its tests could not be read."""
    from eval.sandbox import extract_code, score_code_many

    fields = [params.tests_field] if isinstance(params.tests_field, str) else list(params.tests_field)
    unknown: dict[int, str] = {}
    items, targets = [], []
    for i, r in enumerate(rows):
        meta = json.loads(r.get("meta") or "{}")
        try:
            suite = load_tests(meta if isinstance(meta, dict) else {}, fields)
        except (UnknownTestFormat, TypeError, ValueError, RecursionError) as e:  # one odd row never sinks the stage
            unknown[i] = str(e) if isinstance(e, UnknownTestFormat) else f"{type(e).__name__}: {e}"
            stats["code/unknown_test_format"] = stats.get("code/unknown_test_format", 0) + 1
            continue
        if suite is None:
            continue
        refs[i] = {"kind": "tests"}
        stats[f"tests/{suite.kind}"] = stats.get(f"tests/{suite.kind}", 0) + 1
        if suite.kind != "python" and len(suite.cases) > params.max_tests:
            stats["tests/capped"] = stats.get("tests/capped", 0) + 1
        for x in r["responses"]:
            if x["finish_reason"] == "error":
                continue
            code = extract_code(x["text"] or "")
            if code is None:
                x["verdict"], x["extracted"] = "no_answer", None
                continue
            items.append(_code_job(suite, code, params))
            targets.append(x)
    for x, v in zip(targets, score_code_many(items, workers=max(1, ctx.workers),
                                              per_test_timeout_s=params.timeout_s,
                                              total_timeout_s=params.total_timeout_s)):
        status = v.status if not v.passed else "ok"
        x["verdict"] = _verdict(v.passed, "program", status, x["finish_reason"])
        x["extracted"] = f"{v.n_passed}/{v.n_total} tests"
        stats[f"code/{v.status}"] = stats.get(f"code/{v.status}", 0) + 1
    return unknown


# Code verification reads typed test suites since code-tests v2 (before: a JSON tests string
# was run as a script and passed everything); the op version stays, so that math and
# multiple-choice stages, whose output did not change, keep their fingerprints and caches.
CODE_TESTS_VERSION = "2"


def _code_tests_version(params: VerifyParams) -> dict | None:
    return {"code_tests": CODE_TESTS_VERSION} if params.method == "code" else None


@register_op("verify", version="2", params=VerifyParams, kind="map", self_parallel=True,
             fingerprint_extra=_code_tests_version)
def verify(rows: list[dict], params: VerifyParams, ctx: OpContext) -> OpResult:
    """Record a verdict per sample; select samples by the `keep` policy."""
    kept, dropped = [], []
    stats: dict[str, float] = {}
    rows = [dict(r, responses=[dict(x) for x in r.get("responses") or []]) for r in rows]
    unknown_format: dict[int, str] = {}
    if params.method == "code":
        refs: dict[int, dict] = {}
        unknown_format = _judge_code(rows, refs, params, ctx, stats)
    else:
        refs = _references(rows, params, ctx, stats)
        if params.method == "math":
            _judge_math(rows, refs, params, ctx, stats)
        else:
            _judge_choice(rows, refs, params)
    for i, r in enumerate(rows):
        responses = r["responses"]
        for x in responses:
            if x["finish_reason"] == "error":
                x["verdict"] = "error"
            elif i not in refs:
                x["verdict"] = "unverified"
                if i in unknown_format:
                    x["extracted"] = "unknown_test_format"
            verdict = x["verdict"]
            stats[f"verdict/{verdict}"] = stats.get(f"verdict/{verdict}", 0) + 1
        any_ok = any(x["verdict"] == "correct" for x in responses)
        for x in responses:
            # Narrows the selection, never widens it (distill or filter may
            # have deselected samples).
            if params.keep == "correct":
                ok = x["verdict"] == "correct"
            elif params.keep == "any_correct":
                ok = any_ok and x["finish_reason"] == "stop"
            else:
                ok = x["finish_reason"] != "error"
            x["selected"] = bool(x.get("selected", True)) and ok
        row = dict(r, responses=responses)
        if i in refs and refs[i]["kind"] == "majority":
            meta = json.loads(row.get("meta") or "{}")
            meta["reference"] = refs[i]
            row["meta"] = json.dumps(meta, sort_keys=True)
        if i in unknown_format:
            meta = json.loads(row.get("meta") or "{}")
            if isinstance(meta, dict):
                meta["test_format_error"] = unknown_format[i]
                row["meta"] = json.dumps(meta, sort_keys=True)
        if params.keep != "all" and i not in refs:
            reason = "unknown_test_format" if i in unknown_format else "no_tests" if params.method == "code" else \
                "no_reference" if params.reference != "gold" else "no_gold_answer"
            dropped.append((row, reason))
        elif not any(x["selected"] for x in responses):
            dropped.append((row, "no_correct_sample" if params.keep != "all" else "no_usable_sample"))
        else:
            kept.append(row)
    return OpResult(kept, dropped, stats)
