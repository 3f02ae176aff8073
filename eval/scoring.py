"""Math answer scoring with math-verify, safe to run on untrusted model output.

`score(gold, response)` compares one response with a plain gold answer string
("936", "\\frac{14}{3}", "\\left( 3, \\frac{\\pi}{2} \\right)"):

- the gold is parsed as `\\boxed{gold}` (math-verify's boxed extraction), falling
  back to `$gold$`;
- the response is read as a reasoning model's: everything up to the last
  `</think>` is dropped (a `<think>` never closed leaves no answer), then the content of the LAST `\\boxed{}` (or `\\fbox{}`) is
  the answer; with no box, math-verify's default extraction (final-answer phrases,
  `answer:`, LaTeX, plain expressions) reads the whole text.

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


def extract_prediction(response: str) -> list[Any]:
    """math-verify parse of the answer in `response` (see module docstring)."""
    region = answer_region(response)
    boxed = last_boxed(region)
    if boxed:
        parsed = parse(f"\\boxed{{{boxed}}}", list(_EXTRACTION), parsing_timeout=None)
        if parsed:
            return parsed
    return parse(region, list(_EXTRACTION), parsing_timeout=None)


def _as_text(parsed: list[Any]) -> str | None:
    """A readable form of an extraction: math-verify's matched string if it kept one."""
    if not parsed:
        return None
    strings = [p for p in parsed if isinstance(p, str)]
    return strings[-1] if strings else str(parsed[0])


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
