"""The results record's schema, versioned.

`results.json` is validated against `ResultsRecord` when it is written and
when it is read, so a record that the leaderboard or a reproduction reads is
one the harness could have written. `eval/results.schema.json` is the same
schema as JSON Schema, for tools outside Python; a test keeps it in sync.
Bump `SCHEMA_VERSION` (and keep reading the old version) when a field changes
meaning or goes away; adding optional fields needs no bump.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float
    top_p: float
    max_tokens: int


class BenchmarkResult(_Open):
    name: str
    version: str
    answer_type: str
    prompt_template: str
    prompt_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    hub_id: str | None = None
    revision: str | None = None
    data_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    n_problems: int = Field(ge=0)
    limit: int | None = None
    metrics: dict[str, Any]


class Scoring(_Open):
    timeout_s: float
    versions: dict[str, str]


class Timing(_Open):
    started_at: str
    generation_s: float
    scoring_s: float
    total_s: float


class RecipeRef(_Open):
    name: str
    version: str
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelRef(_Open):
    repo: str
    revision: str
    fingerprint: str | None = None


class ResultsRecord(_Open):
    schema_version: str = Field(pattern=r"^\d+$")
    harness_version: str
    engine: dict[str, Any]
    sampling: Sampling
    seed: int
    samples: int = Field(ge=1)
    ks: list[int] | None = None
    scoring: Scoring
    benchmarks: dict[str, BenchmarkResult]
    timing: Timing
    hardware: dict[str, Any] | None = None
    recipe: RecipeRef | None = None
    model: ModelRef | None = None


def validate_results(record: dict[str, Any], where: str = "results") -> None:
    """Raise ValueError naming the field when `record` does not match the schema."""
    from pydantic import ValidationError

    if str(record.get("schema_version")) != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version {record.get('schema_version')!r}; this harness reads "
                         f"{SCHEMA_VERSION!r}")
    try:
        ResultsRecord.model_validate(record)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{where}: does not match the results schema: {problems}") from None


def json_schema() -> dict[str, Any]:
    schema = ResultsRecord.model_json_schema()
    schema["$id"] = f"https://commonthoughts.dev/schemas/results/v{SCHEMA_VERSION}.json"
    schema["title"] = f"CommonThoughts eval results, schema version {SCHEMA_VERSION}"
    return schema
