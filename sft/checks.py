"""Recipe checks for the `sft` section, run by `python -m data_pipeline validate`.

Registered with `data_pipeline.registries` so that validation (which must not
import trainers by path from a recipe) checks `sft.args` against the installed
TRL and `sft.model.init` against the known students.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.registries import register_recipe_check


def accelerate_config_path(recipe) -> tuple[Path, Path, int | None]:
    """(`sft.accelerate` resolved against the recipe file that sets it, that file, its line):
    an ablation that `extends:` a parent inherits the parent's config unchanged."""
    origin, line = recipe.origins.get(("sft", "accelerate"), (str(recipe.path), None))
    return (Path(origin).parent / recipe.spec.sft.accelerate).resolve(), Path(origin), line


@register_recipe_check
def check_sft_section(recipe) -> list[tuple[tuple, str]]:
    sft = recipe.spec.sft
    if sft is None:
        return []
    problems: list[tuple[tuple, str]] = []
    if sft.model.init is not None:
        from data_pipeline.nano.student import STUDENTS

        if sft.model.init not in STUDENTS:
            problems.append((("sft", "model", "init"), f"unknown student {sft.model.init!r}; known: {sorted(STUDENTS)}"))
    if sft.args:
        from sft.trainer import check_sft_args

        for msg in check_sft_args(sft.args):
            key, _, text = msg.partition(": ")
            loc = tuple(key.split(".")[:3])
            problems.append((loc, text))
    if sft.accelerate is not None:
        if not sft.accelerate.endswith((".yaml", ".yml")) or Path(sft.accelerate).is_absolute():
            problems.append((("sft", "accelerate"), "must be the relative path of an accelerate config file (.yaml)"))
        else:
            path, origin, _ = accelerate_config_path(recipe)
            if not path.is_file():  # only looked at, never loaded here
                problems.append((("sft", "accelerate"), f"no such file {sft.accelerate!r} next to {origin.name}"))
    return problems
