"""Publish a finished data run to the registry: parquet configs plus a card.

Configs: `default` (the SFT-ready rows: `messages` and their ids),
`provenance` (every question that reached the last stage, with all teacher
samples, verdicts and which were selected) and `dropped` (every row a stage
removed, with the stage and the reason). The card's YAML records the recipe,
its fingerprint and the stage graph; its body holds the resolved recipe and
the stage funnel.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCardData

from data_pipeline.cache import StageCache, write_parquet
from data_pipeline.errors import PipelineError
from data_pipeline.pipeline import RunResult, funnel_table
from data_pipeline.recipe import Recipe
from data_pipeline.registry import LocalRegistry, fp_tag

SFT_COLUMNS = ["id", "source", "problem", "answer", "sample_index", "messages"]
ROWS_PER_SHARD = 100_000


def _write_config(table: pa.Table, folder: Path) -> int:
    n = max(1, -(-table.num_rows // ROWS_PER_SHARD))
    for i in range(n):
        part = table.slice(i * ROWS_PER_SHARD, ROWS_PER_SHARD)
        write_parquet(part, folder / f"train-{i:05d}-of-{n:05d}.parquet")
    return n


TEACHER_FIELDS = ("requests", "requests_cached", "requests_new", "attempts", "retries", "prompt_tokens",
                  "completion_tokens", "new_prompt_tokens", "new_completion_tokens", "truncated", "cost", "new_cost",
                  "generation_task_s")


def _teacher_section(result: RunResult) -> str:
    """Teacher accounting per distill stage: what the data cost to make."""
    rows = []
    for s in result.stages:
        extra = s.stats.get("extra", {})
        if "requests" not in extra:
            continue
        p = s.stage.params
        price = getattr(p, "price", None)
        fields = {k: extra[k] for k in TEACHER_FIELDS if k in extra}
        fields.update({k: v for k, v in sorted(extra.items()) if k.startswith(("errors/", "failed/", "finish/"))})
        head = f"### {s.stage.id}: {getattr(p, 'engine', '?')} `{getattr(p, 'model', '?')}`" + \
            (f" @ `{p.revision}`" if getattr(p, "revision", None) else "")
        if price:
            head += f" (prices per million tokens: {price.prompt_per_mtok} prompt, {price.completion_per_mtok} completion, {price.currency})"
        rows.append(head + "\n\n| | |\n|---|---:|\n" + "".join(f"| {k} | {v:,.6g} |\n" for k, v in fields.items()))
    if not rows:
        return ""
    return ("\n## Teacher\n\nCounts of the run that built each stage; `new_*` is what that run paid for "
            "(the rest came from the request cache).\n\n" + "\n".join(rows))


def _contamination_section(dropped: pa.Table | None, examples: int = 3) -> str:
    """Per benchmark: the rows decontamination removed, how they matched, and
    a few examples (the row's problem and the benchmark row it matched)."""
    if dropped is None:
        return ""
    import json

    hits: dict[str, list[dict]] = {}
    for row in dropped.select(["problem", "meta", "drop_reason"]).to_pylist():
        if (row["drop_reason"] or "").startswith("contaminated:"):
            info = json.loads(row["meta"] or "{}").get("contamination", {})
            hits.setdefault(row["drop_reason"].split(":", 1)[1], []).append({**info, "problem": row["problem"] or ""})
    if not hits:
        return ""
    lines = ["\n## Decontamination\n", "| benchmark | rows removed | by n-gram overlap | by fuzzy match |",
             "|---|---:|---:|---:|"]
    for bench, rows in sorted(hits.items()):
        by = {m: sum(r.get("method") == m for r in rows) for m in ("ngram", "fuzzy")}
        lines.append(f"| {bench} | {len(rows)} | {by['ngram']} | {by['fuzzy']} |")
    lines.append("")
    for bench, rows in sorted(hits.items()):
        lines.append(f"Examples ({bench}):\n")
        for r in rows[:examples]:
            text = " ".join(r["problem"].split())[:160].replace("|", "\\|")
            lines.append(f"- `{r.get('id')}` ({r.get('method')}, {r.get('field')}, score {r.get('score')}): {text}")
        lines.append("")
    return "\n".join(lines)


def dataset_card(recipe: Recipe, result: RunResult, counts: dict[str, int], report: str = "") -> str:
    stages = [{"id": s.stage.id, "op": s.stage.op.name, "op_version": s.stage.op.version,
               "fingerprint": s.stage.fingerprint} for s in result.stages]
    funnel = [{k: f[k] for k in ("stage", "rows_in", "rows_out", "dropped", "extra")} for f in result.funnel()]
    data = DatasetCardData(
        configs=[{"config_name": name, "data_files": [{"split": "train", "path": f"{name if name != 'default' else 'data'}/train-*.parquet"}],
                  **({"default": True} if name == "default" else {})} for name in counts],
        tags=["commonthoughts", "sft", "reasoning", "synthetic"],
        task_categories=["text-generation"],
        commonthoughts={"recipe": recipe.name, "version": recipe.version, "fingerprint": result.fingerprint,
                        "extends": recipe.spec.extends, "stages": stages, "funnel": funnel},
    )
    resolved = yaml.safe_dump(recipe.raw, sort_keys=False, allow_unicode=True)
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {recipe.name} {recipe.version}\n\n{recipe.spec.description.strip()}\n\n"
        f"Made by the CommonThoughts recipe engine. Fingerprint: `{result.fingerprint}`.\n\n"
        "| config | rows |\n|---|---:|\n" + "".join(f"| {k} | {v} |\n" for k, v in counts.items()) +
        f"\n## Stage funnel\n\n{funnel_table(result)}\n" + _teacher_section(result) + report +
        f"\n## Recipe (resolved)\n\n```yaml\n{resolved}```\n"
    )


def publish_dataset(recipe: Recipe, result: RunResult, cache: StageCache, registry: LocalRegistry) -> tuple[str, str]:
    """Publish a run; returns (repo, commit)."""
    last = result.stages[-1].stage
    final = cache.read(last.fingerprint)
    if final.num_rows and final.column("messages").null_count == final.num_rows:
        raise PipelineError(f"the last stage ({last.id}) produced no `messages`: end the recipe's stages with a `format` stage")
    tables = {"default": final.select(SFT_COLUMNS)}
    if last.op.name == "format" and last.input:
        tables["provenance"] = cache.read(last.input).drop_columns(["messages", "sample_index"])
    dropped = []
    for s in result.stages:
        for f in cache.shards(s.stage.fingerprint, "dropped"):
            t = pq.read_table(f)
            if t.num_rows:
                dropped.append(t.append_column("stage", pa.array([s.stage.id] * t.num_rows, pa.string())))
    if dropped:
        tables["dropped"] = pa.concat_tables(dropped)
    repo = recipe.dataset_repo
    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        staged = Path(tmp)
        counts = {}
        for name, table in tables.items():
            _write_config(table, staged / ("data" if name == "default" else name))
            counts[name] = table.num_rows
        report = _contamination_section(tables.get("dropped"))
        (staged / "README.md").write_text(dataset_card(recipe, result, counts, report))
        commit = registry.publish("datasets", repo, staged, tags=[f"v{recipe.version}", fp_tag(result.fingerprint)],
                                  message=f"{recipe.name} {recipe.version} ({result.fingerprint[:12]})")
    return repo, commit
