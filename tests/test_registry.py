"""The local registry: revisions, tags, snapshots, interrupted publishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.registry import LocalRegistry, RegistryError, fp_tag


def _stage(tmp: Path, name: str, files: dict[str, str]) -> Path:
    d = tmp / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def test_revisions_tags_and_snapshots(tmp_path: Path):
    reg = LocalRegistry(tmp_path / "reg")
    v1 = reg.publish("datasets", "org/name", _stage(tmp_path, "a", {"README.md": "one", "data/x.parquet": "1"}),
                     tags=["v1.0.0", fp_tag("a" * 64)], message="one")
    v2 = reg.publish("datasets", "org/name", _stage(tmp_path, "b", {"README.md": "two"}), tags=["v2.0.0"], message="two")
    assert v1 != v2 and reg.resolve("datasets", "org/name") == v2
    assert reg.find_fingerprint("datasets", "org/name", "a" * 64) == v1
    old = reg.snapshot("datasets", "org/name", "v1.0.0")
    assert (old / "README.md").read_text() == "one" and (old / "data" / "x.parquet").is_file()
    new = reg.snapshot("datasets", "org/name", "v2.0.0")
    assert not (new / "data").exists()  # a revision is the whole tree, not an overlay
    assert reg.resolve("datasets", "org/none") is None
    with pytest.raises(RegistryError):
        reg.snapshot("datasets", "org/name", "v9.9.9")
    with pytest.raises(RegistryError):
        reg.repo_dir("datasets", "../../etc")


def test_interrupted_publish_leaves_revisions_intact(tmp_path: Path):
    reg = LocalRegistry(tmp_path / "reg")
    v1 = reg.publish("models", "org/m", _stage(tmp_path, "a", {"README.md": "one"}), tags=["v1"], message="one")
    work = reg.repo_dir("models", "org/m")
    (work / "README.md").write_text("half-writ")  # a publish killed while copying
    (work / "stray.bin").write_text("partial")
    assert (reg.snapshot("models", "org/m", "v1") / "README.md").read_text() == "one"
    v2 = reg.publish("models", "org/m", _stage(tmp_path, "b", {"README.md": "two"}), tags=["v2"], message="two")
    assert (reg.snapshot("models", "org/m", v2) / "README.md").read_text() == "two"
    assert not (work / "stray.bin").exists() and reg.resolve("models", "org/m", "v1") == v1
