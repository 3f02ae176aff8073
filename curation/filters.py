"""`filter`: drop malformed or out-of-range questions and deselect unusable
teacher samples, each with its reason.

Questions (rows dropped, with the reason):
  `min_chars`/`max_chars`, `min_tokens`/`max_tokens` (math-aware word tokens
  of curation.text, or a local tokenizer's tokens with `tokenizer:`),
  `require_answer` (a gold answer is present), `languages` (py3langid's
  guess on the problem with its LaTeX removed: its model ships inside the
  package, so it works offline).
Teacher samples (`responses:`, after distill; a sample that fails is
deselected and counted, a row left with no selected sample is dropped with
`no_usable_sample`):
  `drop_truncated` (finish_reason "length"), `require_boxed` (a `\\boxed{}`
  after any `</think>`), `min_tokens`/`max_tokens` (completion tokens).
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.text import tokens
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op

_LATEX_MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[a-zA-Z]+", re.S)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


class ResponseFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drop_truncated: bool = True
    require_boxed: bool = False
    min_tokens: int = Field(default=0, ge=0)
    max_tokens: int | None = Field(default=None, gt=0)


class FilterParams(OpParams):
    min_chars: int = Field(default=1, ge=0)
    max_chars: int = Field(default=20_000, gt=0)
    min_tokens: int = Field(default=0, ge=0)
    max_tokens: int | None = Field(default=None, gt=0)
    tokenizer: str | None = None  # a local tokenizer folder, or "nano"; default: curation.text tokens
    require_answer: bool = True
    languages: list[str] | None = None  # ISO 639-1 codes, e.g. [en]
    responses: ResponseFilter | None = None

    @model_validator(mode="after")
    def _ranges(self) -> "FilterParams":
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars is larger than max_chars")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens is larger than max_tokens")
        if self.languages is not None:
            known = set(_langid().nb_classes)
            unknown = [x for x in self.languages if x not in known]
            if unknown:
                raise ValueError(f"unknown language code(s) {unknown}; py3langid knows {len(known)} ISO 639-1 codes")
        return self


@lru_cache(maxsize=1)
def _langid():
    import py3langid

    # the model that ships inside the package: no download
    return py3langid.langid.LanguageIdentifier.from_modelpath(py3langid.langid.MODEL_DIR / py3langid.langid.MODEL_FILE)


@lru_cache(maxsize=4)
def _count_tokens_fn(tokenizer: str | None):
    if tokenizer is None:
        return lambda text: len(tokens(text))
    from data_pipeline.nano.student import build_tokenizer, load_tokenizer

    tok = build_tokenizer() if tokenizer == "nano" else load_tokenizer(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def language(text: str) -> str:
    """py3langid's language of a problem's prose (LaTeX and commands removed)."""
    prose = _LATEX_MATH.sub(" ", text)
    return _langid().classify(prose if prose.strip() else text)[0]


def has_boxed(text: str) -> bool:
    return bool(_BOXED.search(text.rsplit("</think>", 1)[-1]))


def _question_reason(r: dict, p: FilterParams) -> str | None:
    problem = (r.get("problem") or "").strip()
    if not problem:
        return "empty_problem"
    if len(problem) < p.min_chars:
        return "too_short"
    if len(problem) > p.max_chars:
        return "too_long"
    if p.min_tokens or p.max_tokens is not None:
        n = _count_tokens_fn(p.tokenizer)(problem)
        if n < p.min_tokens:
            return "too_few_tokens"
        if p.max_tokens is not None and n > p.max_tokens:
            return "too_many_tokens"
    if p.require_answer and not (r.get("answer") or "").strip():
        return "no_answer"
    if p.languages is not None and language(problem) not in p.languages:
        return "language"
    return None


def _response_reason(x: dict, f: ResponseFilter) -> str | None:
    if x.get("finish_reason") == "error":
        return "error"
    if f.drop_truncated and x.get("finish_reason") == "length":
        return "truncated"
    n = x.get("completion_tokens") or 0
    if n < f.min_tokens:
        return "response_too_short"
    if f.max_tokens is not None and n > f.max_tokens:
        return "response_too_long"
    if f.require_boxed and not has_boxed(x.get("text") or ""):
        return "no_boxed_answer"
    return None


@register_op("filter", version="2", params=FilterParams, kind="map")
def filter_rows(rows: list[dict], params: FilterParams, ctx: OpContext) -> OpResult:
    """Drop unusable questions; deselect unusable teacher samples."""
    kept, dropped = [], []
    stats: dict[str, float] = {}
    for r in rows:
        reason = _question_reason(r, params)
        if reason is None and params.responses is not None and r.get("responses"):
            responses = [dict(x) for x in r["responses"]]
            for x in responses:
                why = _response_reason(x, params.responses) if x.get("selected", True) else None
                if why:
                    x["selected"] = False
                    stats[f"deselected/{why}"] = stats.get(f"deselected/{why}", 0) + 1
            r = dict(r, responses=responses)
            if not any(x.get("selected") for x in responses):
                reason = "no_usable_sample"
        if reason:
            dropped.append((r, reason))
        else:
            kept.append(r)
    return OpResult(kept, dropped, stats)
