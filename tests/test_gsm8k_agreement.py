"""Our math scorer against GSM8K's labelled model solutions (docs/eval-agreement.md).

`gsm8k/example_model_solutions.jsonl` (openai/grade-school-math) holds 1319 test
problems x 4 GPT-3 systems, each solution labelled `is_correct`. Our verdict,
`score(gold, solution)` with the harness's gold (`gsm8k_gold`: the number after
`####` in `gsm8k/test.jsonl`, commas removed), must agree with the label on >= 99%
of the 5276 samples, and the disagreements must be exactly the known ones.

A verdict can agree while the extraction is wrong (both the misread number and the
model's answer differ from the gold), so a second check reads the answer the solution
states on its final `A: <number>` line and asks our scorer to confirm that it
extracted that number.

Run as a script to print the figures and every disagreement:
    .venv/bin/python tests/test_gsm8k_agreement.py
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

if __name__ == "__main__":  # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.benchmarks import gsm8k_gold, shared_data_dir
from eval.scoring import answer_statement, score, score_many

SYSTEMS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
GSM8K_DIR = shared_data_dir() / "gsm8k"
SOLUTIONS = GSM8K_DIR / "example_model_solutions.jsonl"

# (problem index, system) where our verdict differs from `is_correct`. None: every
# label is reproduced (docs/eval-agreement.md). A change here must be explained there.
KNOWN_DISAGREEMENTS: frozenset[tuple[int, str]] = frozenset()

# (problem index, system) whose final `A:` line states a plain number that our scorer
# does not extract. None since the scorer reads final-answer statements; before, nine
# samples were misread (docs/eval-agreement.md).
KNOWN_MISREAD_FINAL_ANSWERS: frozenset[tuple[int, str]] = frozenset()

_FINAL_NUMBER = re.compile(r"A: *(-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?) *")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_samples() -> list[dict[str, Any]]:
    """One row per (problem, system): index, system, gold, solution, label, and the
    number on the solution's final `A:` line (None if it has no such line)."""
    rows = _read_jsonl(SOLUTIONS)
    test = _read_jsonl(GSM8K_DIR / "test.jsonl")
    assert len(rows) == len(test) == 1319
    samples = []
    for i, (row, ref) in enumerate(zip(rows, test)):
        assert row["question"] == ref["question"], f"problem {i}: the two files are not aligned"
        gold = gsm8k_gold(ref["answer"])
        for system in SYSTEMS:
            solution = row[system]["solution"]
            last = _FINAL_NUMBER.fullmatch(solution.strip().split("\n")[-1])
            stated = last.group(1).replace("$", "").replace(",", "") if last else None
            samples.append({"index": i, "system": system, "gold": gold, "solution": solution,
                            "label": bool(row[system]["is_correct"]), "stated": stated})
    return samples


def measure(workers: int = 2) -> dict[str, Any]:
    """Score every sample (and every stated final answer against its own solution)."""
    samples = load_samples()
    with_stated = [s for s in samples if s["stated"] is not None]
    scores = score_many([(s["gold"], s["solution"]) for s in samples] +
                        [(s["stated"], s["solution"]) for s in with_stated], workers=workers)
    for s, verdict in zip(samples, scores):
        s["ours"], s["extracted"], s["status"] = verdict.correct, verdict.extracted, verdict.status
    misread = [(s, v) for s, v in zip(with_stated, scores[len(samples):]) if not v.correct]
    agree, total = Counter(), Counter()
    for s in samples:
        total[s["system"]] += 1
        agree[s["system"]] += s["ours"] == s["label"]
    return {
        "samples": samples,
        "agreement": sum(agree.values()) / len(samples),
        "per_system": {system: agree[system] / total[system] for system in SYSTEMS},
        "disagreements": [s for s in samples if s["ours"] != s["label"]],
        "with_stated": len(with_stated),
        "misread": misread,
    }


# The same final answers restated as reasoning models and other prompts state them:
# the verdicts must not move (the labels still apply: only the wording changes).
STYLES = {
    "answer is": "The answer is {}.",
    "final answer bold": "**Final Answer:** {}",
    "escaped dollar": "So the final answer is \\${}.",
    "boxed": "Therefore the answer is $\\boxed{{{}}}$.",
    "hashes": "#### {}",
}


def restyle(solution: str, style: str) -> str:
    """`solution` with its final `A: <answer>` line restated in `style` (unchanged if it has none)."""
    head, _, last = solution.strip().rpartition("\n")
    if not last.startswith("A: "):
        return solution
    return f"{head}\n{STYLES[style].format(last[3:].strip())}"


def style_agreement(samples: list[dict[str, Any]], style: str, workers: int = 2) -> list[tuple[int, str]]:
    """Samples whose verdict under `style` differs from the label."""
    scores = score_many([(s["gold"], restyle(s["solution"], style)) for s in samples], workers=workers)
    return [(s["index"], s["system"]) for s, v in zip(samples, scores) if v.correct != s["label"]]


def _need_data() -> None:
    if not SOLUTIONS.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SOLUTIONS} is missing (CI is set: the shared data must be there)")
        pytest.skip("shared data folder not available")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    _need_data()
    return measure(workers=2)


def test_agreement_with_the_labels(result):
    assert len(result["samples"]) == 5276
    assert all(s["status"] == "ok" for s in result["samples"])
    assert result["agreement"] >= 0.99, result["per_system"]
    # The labels' own counts (grade-school-math's README): 286 / 515 / 458 / 742 correct.
    labels = Counter(s["system"] for s in result["samples"] if s["label"])
    assert [labels[system] for system in SYSTEMS] == [286, 515, 458, 742]


def test_disagreements_are_exactly_the_known_ones(result):
    found = {(s["index"], s["system"]) for s in result["disagreements"]}
    assert found == KNOWN_DISAGREEMENTS, sorted(found ^ KNOWN_DISAGREEMENTS)


def test_the_stated_final_answer_is_what_we_extract(result):
    assert result["with_stated"] >= 5260  # all but the truncated and non-numeric final lines
    found = {(s["index"], s["system"]) for s, _ in result["misread"]}
    assert found == KNOWN_MISREAD_FINAL_ANSWERS, [(s["index"], s["system"], s["stated"], v.extracted)
                                                  for s, v in result["misread"]]


@pytest.mark.parametrize(
    "response, statement, gold, correct",
    [
        # The final "A:" line is the answer, not a number after a stray "answer" word
        # (math-verify's own anchor read 34 here: problem 1244, 6b_verification).
        ("She has to answer 70-36 = <<70-36=34>>34 questions correctly.\nA: 18", "18", "18", True),
        ("... to express the answer as a percentage: 32 water / 90 cards\nA: 35.5", "35.5", "35.5", True),
        ("A: $1,000", "$1,000", "1000", True),
        ("A: 5.00", "5.00", "5", True),
        # Q/A few-shot format: "A:" opening a worked solution is not an answer line.
        ("A: Roger has 5 balls.\nHe buys 2 cans of 3.\nThe answer is 11.", "11", "11", True),
        ("A: Roger has 5 balls and buys 6 more, 11 in all.", None, "11", True),
        # "the answer is": the number that opens the statement, not the last one in it.
        ("The answer is 18 (9 eggs x $2).", "18", "18", True),
        ("The answer is 2 + 3 = 5.", "2 + 3 = 5.", "5", True),
        ("So the answer is \\$1,250.50 in total.", "\\$1,250.50", "1250.5", True),
        ("The answer is −3.", "−3", "-3", True),
        # Labels, markdown, the answer on the next line; the last statement wins.
        ("**Final Answer:** 18", "18", "18", True),
        ("**Final Answer**\n\n$\\frac{14}{3}$", "$\\frac{14}{3}$", "\\frac{14}{3}", True),
        ("Answer: 7\nWait, that is wrong.\nAnswer: 9", "9", "7", False),
        ("#### 42", "42", "42", True),
        ("#### 3. Check the result\nShe keeps 5 eggs.", None, "5", True),  # a heading, not an answer
        # No statement: math-verify reads the text, an escaped dollar as currency.
        ("She makes \\$18 per day.", None, "18", True),
        ("costs \\$5 and \\$10", None, "10", True),
    ],
)
def test_final_answer_statements(response, statement, gold, correct):
    assert answer_statement(response) == statement
    assert score(gold, response)[0] is correct


@pytest.mark.parametrize("style", list(STYLES))
def test_restated_final_answers_keep_their_verdicts(result, style):
    assert set(style_agreement(result["samples"], style)) == KNOWN_DISAGREEMENTS


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    res = measure(workers=2)
    n = len(res["samples"])
    print(f"agreement {res['agreement']:.4f} ({n - len(res['disagreements'])}/{n}) "
          f"in {time.perf_counter() - t0:.1f}s")
    for system, value in res["per_system"].items():
        print(f"  {system:18s} {value:.4f}")
    for s in res["disagreements"]:
        print(f"\n--- disagreement: problem {s['index']} {s['system']}: label={s['label']} ours={s['ours']} "
              f"gold={s['gold']} extracted={s['extracted']!r}\n{s['solution']}")
    print(f"\nfinal `A: <number>` lines: {res['with_stated']}; read differently by our scorer: {len(res['misread'])}")
    for s, v in res["misread"]:
        print(f"  problem {s['index']} {s['system']}: stated {s['stated']}, extracted {v.extracted!r}")
    for style in STYLES:
        off = style_agreement(res["samples"], style)
        print(f"restated as {STYLES[style]!r}: agreement {1 - len(off) / n:.4f} ({len(off)} disagreements)")
    no_final = [s for s in res["samples"] if s["stated"] is None]
    print(f"\nno final `A: <number>` line: {len(no_final)}")
    for s in no_final:
        last = s["solution"].strip().split("\n")[-1]
        print(f"  problem {s['index']} {s['system']}: label={s['label']} ours={s['ours']} gold={s['gold']} "
              f"extracted={(s['extracted'] or '')[:30]!r} last line ends {last[-50:]!r}")
