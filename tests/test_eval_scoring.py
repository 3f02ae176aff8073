"""Math scoring: gold parsing, reasoning-model answer extraction, the timed pool."""

from __future__ import annotations

import time

import pytest

from eval.scoring import Score, answer_region, last_boxed, score, score_many


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a \\boxed{1} b \\boxed{\\frac{1}{2}} c", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("so \\fbox{7}", "7"),
        ("The answer is \\boxed 5.", "5"),
        ("unclosed \\boxed{12", "12"),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_answer_region_drops_the_thinking():
    assert answer_region("<think>try \\boxed{5}</think>The answer is 7") == "The answer is 7"
    assert answer_region("no thinking") == "no thinking"
    assert answer_region("<think>still going, maybe \\boxed{5}") == ""  # truncated while thinking


@pytest.mark.parametrize(
    "gold, response, correct, extracted",
    [
        ("936", "so ... \\boxed{936}", True, "936"),
        # The LAST box is the answer (math-verify alone would read {12, 936} here).
        ("936", "First \\boxed{936}. Wait, no: \\boxed{12}", False, "12"),
        ("936", "First \\boxed{12}. Wait, no: \\boxed{936}", True, "936"),
        # A box inside the thinking does not count once the thinking is closed.
        ("7", "<think>maybe \\boxed{5}</think>The answer is $7$.", True, "7"),
        ("5", "<think>maybe \\boxed{5}, let me check", False, None),
        ("\\frac{14}{3}", "$\\boxed{\\dfrac{14}{3}}$", True, "\\frac{14}{3}"),
        ("\\frac{14}{3}", "\\boxed{4.6667}", False, "4.6667"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True, None),
        ("90^\\circ", "\\boxed{90}", True, "90"),
        ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", True, None),
        ("3, 5, 7", "\\boxed{7, 5, 3}", True, None),
        ("2125", "The total is \\boxed{2,125} dollars", True, None),
        # No box: math-verify's fallbacks (answer phrases, LaTeX, plain numbers).
        ("18", "She makes 9 * 2 = 18 dollars.\nThe final answer is 18", True, "18"),
        ("4", "4", True, "4"),
        ("4", "5", False, "5"),
        ("1", "I do not know.", False, None),
        ("1", "", False, None),
    ],
)
def test_score(gold, response, correct, extracted):
    got_correct, got_extracted = score(gold, response)
    assert got_correct is correct
    if extracted is not None:
        assert got_extracted == extracted
    elif not correct:
        assert got_extracted is None


def test_unparseable_gold_is_an_error():
    with pytest.raises(ValueError):
        score("", "\\boxed{1}")


def test_score_many_matches_score_in_order():
    pairs = [("936", "\\boxed{936}"), ("4", "5"), ("\\frac{1}{2}", "$0.5$"), ("1", "nothing")] * 3
    got = score_many(pairs, workers=2)
    assert got == [Score(*score(g, r)) for g, r in pairs]
    assert all(s.status == "ok" for s in got)
    assert score_many([], workers=2) == []


def test_score_many_times_out_and_recovers():
    """A pathological answer (sympy evaluating 9^(9^9) never returns) is killed with
    its worker; the samples after it are still scored."""
    pairs = [("1", "\\boxed{1}"), ("1", "\\boxed{9^{9^{9}}}"), ("2", "\\boxed{2}"), ("3", "\\boxed{4}")]
    t0 = time.perf_counter()
    got = score_many(pairs, workers=2, timeout_s=1.0)
    assert time.perf_counter() - t0 < 10
    assert got[1] == Score(False, None, "timeout")
    assert [s.correct for s in got] == [True, False, True, False]
    assert [s.status for s in got] == ["ok", "timeout", "ok", "ok"]


def test_score_many_reports_bad_gold_as_error():
    got = score_many([("", "\\boxed{1}"), ("1", "\\boxed{1}")], workers=1)
    assert got[0].correct is False and got[0].status.startswith("error")
    assert got[1] == Score(True, "1", "ok")
