"""The generation-engine interface shared by the teacher (curation `distill`) and
the eval harness.

One interface, several engines (DESIGN.md "Engines"): `procedural` (nano
teachers), `transformers` (in-process, small models), `endpoint` (any
OpenAI-compatible server) and `vllm` (offline, GPU). Engines are looked up by
name in `ENGINES`; each module registers itself with `@register_engine`.

`generate` hands each finished completion to `on_result` as soon as it exists
(the request cache stores it there), so a killed run loses only the requests
that were in flight. Engines count what happened in `self.counters`
(`requests_sent`, `errors/<reason>`, `failed/<reason>`, ...): the distill stage
adds them to its stats.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from collections import Counter
from typing import Any, Callable

OnResult = Callable[[int, "Completion"], None]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    """One sample of one conversation. `seed` makes sampling reproducible per
    (problem, sample) and is part of the request-cache key."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...)
    sample_index: int = 0
    seed: int = 0

    @classmethod
    def from_messages(cls, messages: list[dict[str, str]], sample_index: int = 0, seed: int = 0):
        return cls(tuple((m["role"], m["content"]) for m in messages), sample_index, seed)

    def messages_as_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None
    engine: str = ""
    model: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(ABC):
    """A generation engine. `generate` returns one Completion per request, in
    order. Engines never raise for a single failed request: they return a
    Completion with finish_reason="error" and the reason in `error`."""

    name: str = ""

    def __init__(self, model: str, revision: str | None = None, **options: Any):
        self.model = model
        self.revision = revision
        self.options = options
        self.counters: Counter[str] = Counter()

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        """Raise ValueError, with what to do, when this engine cannot run here
        (a missing package, an unset environment variable). Called before the
        first stage runs, so a run fails at start rather than hours in."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        """One Completion per request, in order; `on_result(i, completion)` is
        called for each as soon as it is final."""

    def identity(self) -> dict[str, Any]:
        """What makes two engines give the same answers: part of every request key."""
        return {"engine": self.name, "model": self.model, "revision": self.revision}

    def close(self) -> None:  # pragma: no cover - default no-op
        pass


THINK_TAGS: tuple[str, str] = ("<think>", "</think>")


def split_reasoning(prompt: str, text: str, tags: tuple[str, str] = THINK_TAGS) -> tuple[str | None, str]:
    """(reasoning, answer) of a completion, as a server-side reasoning parser
    (vLLM's `--reasoning-parser deepseek_r1`) puts them in `reasoning_content`
    and `content`, for engines that see the raw text. `prompt` is the rendered
    conversation with its generation prompt.

    - The prompt opens a thought (ends with the opening tag and optional
      whitespace: QwQ-32B, DeepSeek-R1 templates since 2025): the completion
      starts inside it and holds only the closing tag. Reasoning is what comes
      before the first closing tag, the answer what follows it; with no closing
      tag (a truncated thought) it is all reasoning and the answer is empty.
    - Otherwise a completion that starts with the opening tag (the model opened
      the thought itself) is split the same way.
    - Otherwise there is no reasoning: (None, text), the text untouched.

    Both parts are stripped of surrounding whitespace; an empty thought gives
    reasoning None (as the endpoint engine reads an empty `reasoning_content`).
    """
    open_, close = tags
    lead = text.lstrip()
    if prompt.rstrip().endswith(open_):
        body = lead[len(open_):] if lead.startswith(open_) else text  # a repeated opening tag
    elif lead.startswith(open_):
        body = lead[len(open_):]
    else:
        return None, text
    reasoning, _, answer = body.partition(close)
    return reasoning.strip() or None, answer.strip()


def split_completion(completion: "Completion", prompt: str, tags: tuple[str, str] = THINK_TAGS) -> "Completion":
    """`completion` with its reasoning moved out of `text` (split_reasoning);
    failed completions and ones whose reasoning is already apart are left as
    they are. The finish reason is kept: a truncated thought stays "length"."""
    if completion.finish_reason != "error" and completion.reasoning is None:
        completion.reasoning, completion.text = split_reasoning(prompt, completion.text, tags)
    return completion


def request_key(identity: dict[str, Any], sampling: Sampling, request: GenerationRequest) -> str:
    payload = {
        "identity": identity,
        "sampling": sampling.to_dict(),
        "messages": request.messages,
        "sample_index": request.sample_index,
        "seed": request.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str):
    def deco(cls):
        cls.name = name
        ENGINES[name] = cls
        return cls

    return deco


def get_engine(name: str, model: str, revision: str | None = None, **options: Any) -> Engine:
    # Import the built-in engines lazily so that a missing optional dependency
    # (vllm) only fails when that engine is asked for.
    from data_pipeline.engines import _load_builtin

    _load_builtin(name)
    if name not in ENGINES:
        raise KeyError(f"unknown engine {name!r}; known: {sorted(ENGINES)}")
    from data_pipeline.engines.replicas import REPLICABLE, ReplicatedEngine

    replicas = int(options.get("data_parallel_size") or 1)
    if replicas > 1 and name in REPLICABLE:
        ENGINES[name].preflight(options)
        return ReplicatedEngine(name, model, revision, replicas, **options)
    return ENGINES[name](model, revision=revision, **options)


def engine_class(name: str) -> type[Engine]:
    from data_pipeline.engines import _load_builtin

    _load_builtin(name)
    if name not in ENGINES:
        raise KeyError(f"unknown engine {name!r}; known: {sorted(ENGINES)}")
    return ENGINES[name]  # type: ignore[return-value]
