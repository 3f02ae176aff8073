"""Small nano recipes shared by the community tests: a parent and a one-change ablation
(seconds to build, train 12 steps and score)."""

BASE = """\
name: nano-base
version: 1.0.0
data:
  sources:
    arith: {uri: "nano://arith?levels=1-2&families=add", count: 50, seed: 1}
  stages:
    dedup: {method: exact}
    distill: {engine: procedural, model: nano-noisy, samples: 2}
    verify: {keep: correct}
    format: {}
sft:
  model: {init: nano-2m}
  args: {learning_rate: 3.0e-3, max_steps: 12, per_device_train_batch_size: 8, global_batch_size: 16, seed: 0}
eval:
  benchmarks: [nano-bench]
  samples: 2
  sampling: {temperature: 0.6, max_tokens: 48}
"""

CHILD = """\
# Ablation: keep every teacher sample.
extends: base.yaml
name: nano-child
version: 1.0.0
data:
  stages:
    verify: {keep: all}
"""
