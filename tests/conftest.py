from __future__ import annotations

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

