"""Name registries filled by the packages above `data_pipeline`.

`data_pipeline` runs ops and validates benchmark names it does not know by name
(DESIGN.md, "Layers"): `curation` registers its ops here and `eval` registers its
benchmark names. Entry points call `load_plugins()` to fill them.
"""

from __future__ import annotations

import importlib

BENCHMARK_NAMES: set[str] = set()


def register_benchmark_name(name: str) -> None:
    BENCHMARK_NAMES.add(name)


def load_plugins() -> None:
    """Import the packages that register ops and benchmarks (installed, not paths
    from a recipe: validating a recipe never imports code a recipe names)."""
    for module in ("curation", "eval.benchmarks", "sft.checks"):
        importlib.import_module(module)

# Extra recipe checks registered by upper layers (e.g. `sft` checks `sft.args`
# against the installed TRL). Each returns [(field path tuple, message)].
RECIPE_CHECKS: list = []


def register_recipe_check(fn):
    RECIPE_CHECKS.append(fn)
    return fn
