"""Text normalisation shared by dedup and decontamination."""

from __future__ import annotations

import re
import unicodedata

_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,!;: ]|\\displaystyle|\\text\{([^}]*)\}|\$")
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[^\sa-z\d]")


def normalise(text: str) -> str:
    """Lowercase, NFKC, LaTeX spacing and sizing commands removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _LATEX_NOISE.sub(lambda m: m.group(1) or " ", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))
