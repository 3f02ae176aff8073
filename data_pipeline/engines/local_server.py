"""A real OpenAI-compatible teacher on loopback: `transformers serve` (the
`serving` extra of transformers) on a small local model.

Used by the endpoint engine's tests and the distill benchmark, and handy for
trying an endpoint recipe on a laptop:

    python -m data_pipeline.engines.local_server MODEL_DIR --port 8000

`build_tiny_chat_model` makes a 2-layer random Qwen2 with a byte-level
tokenizer and a ChatML template from a config, with no network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_chat_model(out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer, 64-wide random Qwen2 with a byte-level tokenizer and a ChatML
    template, saved like a Hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
        initializer_range=0.2,  # peaked logits: greedy comparisons free of near-ties
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("transformers")
    if not found:
        raise RuntimeError("`transformers serve` is not installed: pip install 'transformers[serving]'")
    return [found, "serve"]


class TransformersServe:
    """`transformers serve MODEL` on 127.0.0.1, started and stopped as a context
    manager. `base_url` is the `/v1` root for the endpoint engine."""

    def __init__(self, model_dir: str | Path, *, port: int | None = None, log_path: Path | None = None,
                 threads: int = 1, startup_timeout_s: float = 180, extra_args: tuple[str, ...] = ()):
        self.model_dir, self.port = str(model_dir), port or free_port()
        self.log_path, self.threads, self.startup_timeout_s = log_path, threads, startup_timeout_s
        self.extra_args = tuple(extra_args)  # e.g. ("--continuous-batching",)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "TransformersServe":
        cmd = [*_serve_command(), self.model_dir, "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--log-level", "warning", *self.extra_args]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + self.startup_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError(f"transformers serve did not answer within {self.startup_timeout_s:g}s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model folder (default: build a tiny random chat model)")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    model = args.model
    if not model:
        import tempfile

        model = str(build_tiny_chat_model(Path(tempfile.mkdtemp(prefix="tiny-chat-"))))
    with TransformersServe(model, port=args.port) as server:
        print(f"serving {model} at {server.base_url} (Ctrl-C stops)", flush=True)
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
