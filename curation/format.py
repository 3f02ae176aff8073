"""`format`: turn each selected teacher sample into an SFT conversation.

One output row per selected sample (`sample_index` says which), with
`messages` = [system?] + user + assistant. Reasoning kept apart by the engine
(`reasoning_content`) is put back inline between think tags, or dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class FormatParams(OpParams):
    system_prompt: str | None = None
    user_template: str = "{problem}"
    reasoning: Literal["inline", "drop"] = "inline"
    think_tags: tuple[str, str] = ("<think>", "</think>")

    @field_validator("user_template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("user_template must contain {problem}")
        return v


@register_op("format", version="1", params=FormatParams, kind="map")
def format_rows(rows: list[dict], params: FormatParams, ctx: OpContext) -> OpResult:
    """One chat row per selected sample."""
    out, dropped = [], []
    for r in rows:
        chosen = [x for x in r.get("responses") or [] if x.get("selected")]
        if not chosen:
            dropped.append((r, "no_selected_sample"))
            continue
        for x in chosen:
            text = x["text"] or ""
            if x.get("reasoning") and params.reasoning == "inline":
                open_, close = params.think_tags
                text = f"{open_}\n{x['reasoning']}\n{close}\n{text}"
            msgs = [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
            msgs += [{"role": "user", "content": params.user_template.replace("{problem}", r["problem"])},
                     {"role": "assistant", "content": text}]
            out.append(dict(r, prompt=None, responses=None, sample_index=x["sample_index"], messages=msgs))
    return OpResult(out, dropped, {"conversations": len(out)})
