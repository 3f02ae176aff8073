from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and registry for one test (also for subprocesses it starts)."""
    monkeypatch.setenv("COMMONTHOUGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COMMONTHOUGHTS_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def shared_data() -> Path:
    """../shared/data; in CI its absence is an error, elsewhere tests that need it skip."""
    d = Path(os.environ.get("COMMONTHOUGHTS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not d.is_dir():
        if os.environ.get("CI"):
            raise RuntimeError(f"shared data not found at {d} (required in CI)")
        pytest.skip(f"shared data not found at {d}")
    return d
