"""The nano track's programmatic teachers behind the engine interface.

Like a real teacher, it sees only the rendered conversation: it reads the last
user message, solves it (data_pipeline.nano.teachers) and samples its mistakes
from a generator seeded by the request's seed, so a sample is a pure function
of the request.
"""

from __future__ import annotations

import random

from data_pipeline.engines.base import Completion, Engine, GenerationRequest, OnResult, Sampling, register_engine


@register_engine("procedural")
class ProceduralEngine(Engine):
    def __init__(self, model: str, revision: str | None = None, **options):
        from data_pipeline.nano import teachers

        if model not in teachers.TEACHERS:
            raise ValueError(f"unknown procedural teacher {model!r}; known: {sorted(teachers.TEACHERS)}")
        super().__init__(model, revision, **options)
        self._teachers = teachers

    def identity(self):
        # The teachers' code is their "weights": hash it into the identity so a
        # changed teacher never serves stale cached answers.
        import hashlib
        from pathlib import Path

        code = Path(self._teachers.__file__).read_bytes() + Path(self._teachers.__file__).with_name("tasks.py").read_bytes()
        return {**super().identity(), "code": hashlib.sha256(code).hexdigest()[:16]}

    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        out = []
        for i, req in enumerate(requests):
            user = next((c for r, c in reversed(req.messages) if r == "user"), "")
            rng = random.Random(req.seed)
            text, finish = self._teachers.answer(self.model, user, rng)
            if len(text.encode()) > sampling.max_tokens:  # byte-level budget, as the nano tokenizer counts
                text, finish = text.encode()[: sampling.max_tokens].decode(errors="ignore"), "length"
            prompt_tokens = sum(len(c.encode()) for _, c in req.messages)
            out.append(Completion(text, finish, prompt_tokens, len(text.encode()), None, self.name, self.model))
            if on_result:
                on_result(i, out[-1])
        self.counters["attempts"] += len(requests)
        return out
