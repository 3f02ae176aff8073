"""Math answer scoring with math-verify, safe to run on untrusted model output.

`score(gold, response)` compares one response with a plain gold answer string
("936", "\\frac{14}{3}", "\\left( 3, \\frac{\\pi}{2} \\right)"):

- the gold is parsed as `\\boxed{gold}` (math-verify's boxed extraction), falling
  back to `$gold$`;
- the response is read as a reasoning model's: everything up to the last
  `</think>` is dropped (a `<think>` never closed leaves no answer), then the content of the LAST `\\boxed{}` (or `\\fbox{}`) is
  the answer; with no box, the last final-answer statement is (`Answer: 18`,
  `**Final Answer**` over the answer's line, `the answer is $1,000.`, a Q/A
  format's `A: 18`, `#### 18`; see `answer_statement`); with neither,
  math-verify's default extraction (final-answer phrases, `answer:`, LaTeX, plain
  expressions) reads the whole text, escaped dollar signs (`\\$18`) read as
  currency.

math-verify's own timeouts use SIGALRM, which only works in a main thread and
cannot interrupt a computation stuck in C (sympy big integers: `9^{9^{9}}`). So
`score` runs without them, and `score_many` runs it in worker processes under a
per-sample wall-clock deadline: a worker that overruns is killed and replaced, and
the sample counts as incorrect with status "timeout".
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple, Sequence

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

logger = logging.getLogger(__name__)

# math-verify's defaults (final-answer phrases, then boxed, then `answer:`, then
# bare LaTeX) plus plain expressions; used for the gold and for unboxed responses.
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())
_THINK_START, _THINK_END = "<think>", "</think>"
_BOX = re.compile(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+)")

# Final-answer statements (read when a response has no box; the last one counts):
# a line labelled "Answer:" / "Final answer:" (markdown emphasis allowed, the answer on
# the label's line or, for a label alone on its line, on the next non-empty line);
# "A: <answer>", the answer line of the Q/A format, only when an answer opens it ("A:
# Roger has 5 balls." opens a worked solution instead); "#### <answer>" holding only
# the answer (a markdown heading "#### 3. Check" is not one); "the (final) answer is ...".
_LABEL_LINE = re.compile(
    r"^[ \t>*_#-]*?\b(?P<label>final[ \t]+answer|answer|A)\b[ \t*_]*(?P<colon>[:：])?[ \t*_]*(?P<content>[^\n]*)$",
    re.IGNORECASE | re.MULTILINE,
)
_HASH_LINE = re.compile(r"^[ \t]*####[ \t]*(?P<content>[^\n#]+)$", re.MULTILINE)
_ANSWER_PHRASE = re.compile(
    r"\b(?:final[ \t]+answer|answer)[ \t*_]*(?:is|would[ \t]+be|will[ \t]+be|should[ \t]+be)\b"
    r"[ \t]*[:：]?[ \t*_]*(?P<content>[^\n]*)",
    re.IGNORECASE,
)
# A number as an answer is written: sign, currency, thousands separators, decimals, a
# fraction, a percent sign ("$1,250.50", "-3", ".5", "3/4", "12.5%", "\$18").
_NUMBER = re.compile(
    r"[-−+]?[ \t]*(?:\\?\$|[€£¥₹])?[ \t]*[-−+]?"
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+|(?=\.\d))(?:\.\d+)?"
    r"(?:[ \t]*/[ \t]*\d+(?:\.\d+)?)?"
    r"(?:[ \t]*(?:\\?%|percent\b))?"
)
_CONTINUES = "-−+*/×÷=^·"  # an operator after a number: "2 + 3 = 5" is not the answer "2"


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once per process that its timeouts are off; here that is
    deliberate (see module docstring), so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


class Score(NamedTuple):
    correct: bool
    extracted: str | None
    status: str = "ok"  # "ok" | "timeout" | "error: <reason>"


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (braces balanced), or the
    token after a brace-less `\\boxed 5`; None if there is none. An unclosed last
    box yields everything after its opening brace."""
    match = None
    for match in _BOX.finditer(text):
        pass
    if match is None:
        return None
    i = match.end()
    if match.group(1) != "{":  # "\boxed 5"
        token = text[i:].split(None, 1)[0].rstrip("$.,") if text[i:].strip() else ""
        return token or None
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return text[i:].strip() or None


def answer_region(response: str) -> str:
    """The part of a response that holds the final answer: after the last
    `</think>`; empty when a `<think>` was opened and never closed (the model was
    still thinking: an answer tried out there was not given)."""
    cut = response.rfind(_THINK_END)
    if cut >= 0:
        return response[cut + len(_THINK_END) :]
    return "" if _THINK_START in response else response


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple[Any, ...]:
    """Parse a plain gold answer string (cached: golds repeat across samples)."""
    text = gold.strip()
    candidates = [text] if "\\boxed" in text else [f"\\boxed{{{text}}}", f"${text}$"]
    for candidate in candidates:
        parsed = parse(candidate, list(_EXTRACTION), parsing_timeout=None)
        if parsed:
            return tuple(parsed)
    return ()


def _leading_answer(content: str) -> str | None:
    r"""The answer that opens `content`, a statement's text: a LaTeX span (`$...$`,
    `\(...\)`, `\[...\]`) or a number as `_NUMBER` writes it, followed by nothing that
    continues a calculation (`2 + 3 = 5`, `3x`, `10+John's age` give none)."""
    text = content.strip().lstrip("*_ \t")
    for opening, closing in (("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if text.startswith(opening) and not (opening == "$" and _NUMBER.match(text)):
            end = text.find(closing, len(opening))
            return text[: end + len(closing)] if end > len(opening) else None
    match = _NUMBER.match(text)
    if not match or not any(ch.isdigit() for ch in match.group(0)):
        return None
    rest = re.sub(r"^(?:\*\*|\*|__)", "", text[match.end() :])  # "**18**"
    if rest.lstrip()[:1] and rest.lstrip()[0] in _CONTINUES:
        return None
    if rest[:1] and (rest[0].isalnum() or rest[0] in "_{\\^"):  # "3x", "2\pi", "10^6"
        return None
    if re.match(r"[ \t]*,[ \t]*[-−$]?\d", rest):  # "3,5" (a decimal comma), "3, 5, 7" (a list)
        return None
    return match.group(0).strip()


def answer_statement(text: str) -> str | None:
    """The answer given by the last final-answer statement in `text` (see `_LABEL_LINE`):
    the answer that opens the statement (`_leading_answer`), else the statement's line
    ("Answer: the total is 18 dollars" gives "the total is 18 dollars"); None when
    `text` makes no such statement."""
    best: tuple[int, str] | None = None

    def offer(position: int, answer: str | None) -> None:
        nonlocal best
        if answer and answer.strip() and (best is None or position >= best[0]):
            best = (position, answer.strip())

    for m in _LABEL_LINE.finditer(text):
        label, content = m.group("label").lower(), m.group("content").strip()
        if label == "a":  # "A: 18", not "a: ..." nor "A train leaves"
            if m.group("label") == "A" and m.group("colon"):
                offer(m.start(), _leading_answer(content))
        elif m.group("colon") and content:
            offer(m.start(), _leading_answer(content) or content)
        elif not content:  # "**Final Answer**" or "Answer:" alone: the next non-empty line
            following = text[m.end() :].lstrip().split("\n", 1)[0].strip()
            if following:
                offer(m.start(), _leading_answer(following) or following)
    for m in _HASH_LINE.finditer(text):
        content = m.group("content").strip().rstrip(".").strip()
        answer = _leading_answer(content)
        if answer and answer == content.lstrip("*_ \t").rstrip("*_ \t"):
            offer(m.start(), answer)
    for m in _ANSWER_PHRASE.finditer(text):
        content = m.group("content").strip()
        offer(m.start(), _leading_answer(content) or content)
    return best[1] if best else None


def _plain_currency(text: str) -> str:
    """`\\$18` -> ` 18`: an escaped dollar is a currency sign (it never delimits LaTeX
    math) and math-verify finds nothing in `\\$18`; turning it into `$` could pair it
    with another into a bogus `$...$` span. A Unicode minus becomes `-`."""
    return text.replace("\\$", " ").replace("−", "-")


def extract_prediction(response: str) -> list[Any]:
    """math-verify parse of the answer in `response` (see module docstring)."""
    region = answer_region(response)
    boxed = last_boxed(region)
    if boxed:
        parsed = parse(f"\\boxed{{{boxed}}}", list(_EXTRACTION), parsing_timeout=None)
        if parsed:
            return parsed
    statement = answer_statement(region)
    if statement:
        parsed = parse(_plain_currency(statement), list(_EXTRACTION), parsing_timeout=None)
        if parsed:
            return parsed
    return parse(_plain_currency(region), list(_EXTRACTION), parsing_timeout=None)


def _as_text(parsed: list[Any]) -> str | None:
    """A readable form of an extraction: math-verify's matched string if it kept one."""
    if not parsed:
        return None
    strings = [p for p in parsed if isinstance(p, str)]
    return strings[-1] if strings else str(parsed[0])


_PLAIN_FRAC = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def answer_key(extracted: str | None) -> str | None:
    r"""A grouping key for majority voting (`eval.metrics.answer_ids`): one key for
    the ways of writing the same rational number ("18", "18.00", "1,000" and "1000",
    "0.5", "1/2" and "\frac{1}{2}"), else the extracted text without whitespace;
    None (no answer) stays None. Answers equal only up to algebra ("2\sqrt{2}" and
    "\sqrt{8}") keep separate keys: grouping those needs math-verify's `verify`."""
    if extracted is None:
        return None
    text = re.sub(r"\s+", "", extracted)
    frac = _PLAIN_FRAC.fullmatch(text)
    number = f"{frac.group(1)}/{frac.group(2)}" if frac else text
    if _THOUSANDS.fullmatch(number):
        number = number.replace(",", "")
    try:
        return str(Fraction(number))
    except (ValueError, ZeroDivisionError):
        return text


def score(gold: str, response: str) -> tuple[bool, str | None]:
    """(correct, extracted answer or None) for one response. No timeout: use
    `score_many` for untrusted input."""
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        raise ValueError(f"gold answer {gold!r} could not be parsed")
    pred = extract_prediction(response)
    if not pred:
        return False, None
    correct = verify(list(gold_parsed), pred, timeout_seconds=None)
    return bool(correct), _as_text(pred)


# ----------------------------------------------------------------------------- pool


_READY = "ready"
_STARTUP_TIMEOUT_S = 300.0


def _worker_main(conn: Connection) -> None:
    """Worker loop: say ready, then receive (index, gold, response) and send back
    (index, Score) until told to stop."""
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, gold, response = msg
        try:
            correct, extracted = score(gold, response)
            result = Score(correct, extracted)
        except Exception as exc:  # noqa: BLE001 - one bad sample must not stop a run
            result = Score(False, None, f"error: {type(exc).__name__}: {exc}")
        conn.send((index, result))


def _context() -> mp.context.BaseContext:
    """fork on Linux: a worker starts at once, with math-verify already imported
    (as torch's DataLoader workers do; the workers never touch torch or CUDA).
    Elsewhere spawn, whose workers re-import the main module: guard scripts
    with `if __name__ == "__main__":`."""
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: int | None = None
    deadline: float = 0.0


def _launch(ctx: mp.context.BaseContext) -> _Worker:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


def _await_ready(worker: _Worker) -> _Worker:
    """Block until the worker has started: start-up never counts against a deadline."""
    if not worker.conn.poll(_STARTUP_TIMEOUT_S) or worker.conn.recv() != _READY:
        _stop_worker(worker, kill=True)
        raise RuntimeError("a scoring worker did not start")
    return worker


def _start_workers(ctx: mp.context.BaseContext, n: int) -> list[_Worker]:
    return [_await_ready(w) for w in [_launch(ctx) for _ in range(n)]]


def _stop_worker(worker: _Worker, kill: bool = False) -> None:
    if kill:
        worker.process.kill()
    else:
        try:
            worker.conn.send(None)
        except OSError:
            worker.process.kill()
    worker.process.join(timeout=5)
    if worker.process.is_alive():  # pragma: no cover - defensive
        worker.process.kill()
        worker.process.join()
    worker.conn.close()


def score_many(
    pairs: Sequence[tuple[str, str]],
    workers: int = 2,
    timeout_s: float = 5.0,
) -> list[Score]:
    """Score (gold, response) pairs in `workers` processes, in order. A sample
    that takes longer than `timeout_s` (wall clock, gold parsing included) is
    killed with its worker and reported as Score(False, None, "timeout")."""
    n = len(pairs)
    results: list[Score | None] = [None] * n
    if n == 0:
        return []
    ctx = _context()
    todo = deque(range(n))
    pool = _start_workers(ctx, max(1, min(workers, n)))
    timeouts = 0
    try:
        while todo or any(w.task is not None for w in pool):
            for w in pool:
                if w.task is None and todo:
                    w.task = todo.popleft()
                    gold, response = pairs[w.task]
                    w.conn.send((w.task, gold, response))
                    w.deadline = time.monotonic() + timeout_s
            busy = [w for w in pool if w.task is not None]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=wait_s)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        index, result = w.conn.recv()
                        results[index] = result
                        w.task = None
                        continue
                    except EOFError:  # the worker died (out of memory, crash)
                        results[w.task] = Score(False, None, "error: scoring worker died")
                elif time.monotonic() >= w.deadline:
                    results[w.task] = Score(False, None, "timeout")
                    timeouts += 1
                else:
                    continue
                _stop_worker(w, kill=True)
                pool[i] = _start_workers(ctx, 1)[0]
    finally:
        for w in pool:
            _stop_worker(w, kill=w.task is not None)
    if timeouts:
        logger.warning("scoring: %d of %d samples timed out after %.1fs", timeouts, n, timeout_s)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- multiple choice

_CHOICE_PATTERNS = [
    # \boxed{B}, \boxed{(B)}, \boxed{\text{B}}
    r"\\boxed\s*\{\s*(?:\\text\{\s*)?\(?\s*([{L}])\s*\)?\s*\}?\s*\}",
    # "the answer is (B)", "Answer: B", "final answer: **C**", "correct option is D"; the
    # letter is upper case or in parentheses, so "the answer is a prime" reads nothing
    r"(?i:answer|option|choice)\s*(?i:is)?\s*[:\-]?\s*\**\s*(?:\(\s*([{L}{l}])\s*\)|([{L}]))(?![A-Za-z0-9])",
    # a line that is only the letter: "(C)", "C.", "**D**"
    r"(?m)^\s*\**\s*\(?\s*([{L}])\s*[).:]?\s*\**\s*$",
]


def extract_choice(response: str, letters: str = "ABCD") -> str | None:
    """The option letter a response gives as its final answer, or None.

    Only letters in an answer position count: in `\\boxed{}`, after "answer
    is"/"Answer:"/"option", or alone on a line; the last such mention wins. A
    letter inside a word ("A train leaves...") or a bare "I" is never read as
    an answer, which is where simple `[A-D]` searches go wrong."""
    region = answer_region(response)
    best: tuple[int, str] | None = None
    for pattern in _CHOICE_PATTERNS:
        regex = pattern.replace("{L}", re.escape(letters)).replace("{l}", re.escape(letters.lower()))
        for m in re.finditer(regex, region):
            group = next(g for g in range(1, (m.lastindex or 1) + 1) if m.group(g))
            letter = m.group(group).upper()
            if letter in letters and (best is None or m.start(group) > best[0]):
                best = (m.start(group), letter)
        if best is not None and pattern.startswith("\\\\boxed"):
            return best[1]  # a boxed letter is the answer, whatever text follows
    return best[1] if best else None
