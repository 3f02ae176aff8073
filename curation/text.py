"""Math-aware text normalisation shared by dedup and decontamination.

Two copies of a math problem often differ only in how they are typeset:
`\\dfrac` or `\\frac`, `\\left(` or `(`, `$...$` or `\\(...\\)`, `1,000` or
`1{,}000` or `1000`, `3.50` or `3.5`, "twelve" or "12", extra LaTeX spacing
(`\\,`, `\\;`, `\\quad`). `normalise` maps each of these to one form, so the
n-gram and MinHash comparisons see the problem, not its typesetting.
Written by hand: text normalisers in datatrove and elsewhere strip
punctuation and digits, which is what math problems are made of.
"""

from __future__ import annotations

import re
import unicodedata

_SPACING = re.compile(r"\\(?:[,!;:> ]|quad|qquad|displaystyle|textstyle|scriptstyle|limits|nolimits)(?![a-zA-Z])")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?:[lrm])?(?![a-zA-Z])")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_DELIMS = re.compile(r"\\[()\[\]]|\$")
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\}|\\,)(?=\d{3}(?!\d))")
_TRAILING_ZEROS = re.compile(r"(?<=\d)\.(\d*?)0+(?!\d)")
_DEGREE = re.compile(r"\^\s*\{?\\circ\}?|°")
_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split())
}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
                      "ninety": "90", "hundred": "100", "thousand": "1000"})
_WORD_NUM = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b")
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[^\sa-z\d{}]")


def normalise(text: str) -> str:
    """NFKC and lowercase; LaTeX spacing, sizing and math delimiters removed;
    `\\dfrac`/`\\tfrac` -> `\\frac`; text commands unwrapped; digit grouping
    removed; trailing decimal zeros dropped; number words 0-20 and tens to
    digits; whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = _TEXT_CMD.sub(lambda m: f" {m.group(1)} ", text)
    text = _SPACING.sub(" ", text)
    text = _SIZING.sub("", text)
    text = _FRAC.sub(r"\\frac", text)
    text = _DEGREE.sub(" degrees ", text)
    text = _DELIMS.sub(" ", text)
    text = text.lower()
    text = _THOUSANDS.sub("", text)
    text = _TRAILING_ZEROS.sub(lambda m: "." + m.group(1) if m.group(1) else "", text)
    text = _WORD_NUM.sub(lambda m: _NUMBER_WORDS[m.group(1)], text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """Words, numbers and single symbols of the normalised text (braces dropped)."""
    return _TOKEN.findall(normalise(text))
