"""Generation engines (see base.py)."""

import importlib

from data_pipeline.engines.base import (  # noqa: F401
    ENGINES,
    Completion,
    Engine,
    GenerationRequest,
    Sampling,
    engine_class,
    get_engine,
    register_engine,
    request_key,
)

_BUILTIN = {
    "procedural": "data_pipeline.engines.procedural",
    "transformers": "data_pipeline.engines.transformers_engine",
    "endpoint": "data_pipeline.engines.endpoint",
    "vllm": "data_pipeline.engines.vllm_engine",
}
KNOWN_ENGINES = sorted(_BUILTIN)


def _load_builtin(name: str) -> None:
    if name in _BUILTIN and name not in ENGINES:
        importlib.import_module(_BUILTIN[name])
