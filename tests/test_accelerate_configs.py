"""The shipped accelerate configs (recipes/accelerate/) are accepted by
accelerate as they are: loaded by its config classes and turned into the
launch environment by the same functions `accelerate launch` calls, up to
starting the processes (no GPU here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


def _launch_env(path: Path) -> dict[str, str]:
    """What `accelerate launch --config_file path train.py` computes before it
    starts the processes (accelerate/commands/launch.py: launch_command)."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
        return env
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name, kind, check", [
    ("ddp", "MULTI_GPU", {}),
    ("zero2", "DEEPSPEED", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
    ("zero3", "DEEPSPEED", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
                            "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}),
    ("fsdp", "FSDP", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                      "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}),
])
def test_shipped_config_is_accepted_by_accelerate(name, kind, check):
    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind and config.mixed_precision == "bf16"
    env = _launch_env(path)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in check.items():
        assert env.get(key) == value, (key, env.get(key))


def test_every_config_in_the_folder_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["ddp", "fsdp", "zero2", "zero3"]


def test_a_misspelt_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "zero2.yaml").read_text().replace("num_processes", "num_process"))
    with pytest.raises(ValueError, match="unknown keys.*num_process"):
        load_config_from_file(str(bad))
