"""Generation engines (see base.py)."""

import importlib

from data_pipeline.engines.base import (  # noqa: F401
    ENGINES,
    Completion,
    Engine,
    GenerationRequest,
    Sampling,
    get_engine,
    register_engine,
    request_key,
)

_BUILTIN = {
    "procedural": "data_pipeline.engines.procedural",
    "transformers": "data_pipeline.engines.transformers_engine",
}


def _load_builtin(name: str) -> None:
    if name in _BUILTIN and name not in ENGINES:
        importlib.import_module(_BUILTIN[name])
