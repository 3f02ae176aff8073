"""The pinned offline benchmark files (eval/benchmark_data.py): the manifest
matches the shared data folder and lists every file eval/benchmarks.py reads;
`fetch` downloads, verifies, skips and refuses; a machine without the files
gets one clear message naming `python -m eval fetch-data`, not a traceback."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval.benchmarks as benchmarks
from eval.benchmark_data import FILES, BenchmarkDataError, fetch, file_sha256, verify
from eval.benchmarks import BENCHMARKS, BenchmarkDataMissing, get_benchmark, shared_data_dir
from eval.cli import main as eval_main

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data_dir()
needs_data = pytest.mark.skipif(not SHARED.is_dir() and os.environ.get("CI") != "true",
                                reason="needs ../shared/data (required in CI)")
DATA_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".gz", ".parquet", ".csv")


# --------------------------------------------------------------- (a) the manifest


@needs_data
@pytest.mark.parametrize("f", FILES, ids=[f.path for f in FILES])
def test_manifest_matches_the_shared_data(f):
    path = SHARED / f.path
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size == f.size
    assert file_sha256(path) == f.sha256


@needs_data
def test_verify_passes_on_the_shared_data():
    assert verify(SHARED) == []


def test_manifest_entries_are_well_formed():
    assert len({f.path for f in FILES}) == len(FILES)
    for f in FILES:
        assert len(f.commit) == 40 and int(f.commit, 16) >= 0, f.path
        assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0, f.path
        assert f.repo.count("/") == 1 and f.size > 0 and not f.path.startswith("/"), f.path
        assert f.url() == f"https://raw.githubusercontent.com/{f.repo}/{f.commit}/{f.source_path}"


# ---------------------------------------- (b) every file benchmarks.py reads is listed


def _files_read_by_benchmarks() -> set[str]:
    tree = ast.parse(Path(benchmarks.__file__).read_text())
    read: set[str] = set()
    for node in ast.walk(tree):
        # module constants such as MATH500_FILE = "qwen25math-eval/math500/test.jsonl"
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_FILE")
                                                for t in node.targets):
            assert isinstance(node.value, ast.Constant), ast.unparse(node)
            read.add(node.value.value)
        # every _read_jsonl(X) call, X a constant or a module name
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_read_jsonl":
            (arg,) = node.args
            if isinstance(arg, ast.Constant):
                read.add(arg.value)
            else:
                assert isinstance(arg, ast.Name), f"_read_jsonl of a computed path: {ast.unparse(node)}"
                read.add(getattr(benchmarks, arg.id))
        # and any other string that looks like a data file path
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value \
                and " " not in node.value and node.value.endswith(DATA_SUFFIXES):
            read.add(node.value)
    read |= {b.offline_path for b in BENCHMARKS.values() if b.offline_path}
    return read


def test_every_file_benchmarks_read_is_in_the_manifest():
    read = _files_read_by_benchmarks()
    assert len(read) >= 9, read
    listed = {f.path for f in FILES}
    assert read - listed == set(), "add these to eval/benchmark_data.py FILES (from shared/data/SOURCES.md)"
    assert listed - read == set(), "the manifest lists files no benchmark reads"


# --------------------------------------------------------------- (c) fetch


def _mirror(tmp_path: Path) -> Path:
    """GitHub's raw layout, <mirror>/<repo>/<commit>/<path>, from the shared data."""
    mirror = tmp_path / "mirror"
    for f in FILES:
        target = mirror / f.repo / f.commit / f.source_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / f.path, target)
    return mirror


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


@needs_data
def test_fetch_downloads_verifies_then_skips(tmp_path):
    base = _mirror(tmp_path).as_uri()
    dest = tmp_path / "dest"
    first = fetch(dest, base_url=base)
    assert [a for _, a in first] == ["fetched"] * len(FILES)
    assert verify(dest) == []
    assert sorted(p.relative_to(dest).as_posix() for p in _files_under(dest)) == sorted(f.path for f in FILES)
    second = fetch(dest, base_url=base)
    assert [a for _, a in second] == ["skipped"] * len(FILES)
    # a file with another sha256 is replaced, the others are left alone
    (dest / FILES[1].path).write_text("edited\n")
    assert verify(dest) == [f"{FILES[1].path}: 7 bytes, expected {FILES[1].size}"]
    third = dict((f.path, a) for f, a in fetch(dest, base_url=base))
    assert third[FILES[1].path] == "replaced" and list(third.values()).count("skipped") == len(FILES) - 1
    assert verify(dest) == []


@needs_data
def test_fetch_refuses_a_corrupted_file_and_leaves_nothing(tmp_path):
    mirror = _mirror(tmp_path)
    f = FILES[0]
    bad = mirror / f.repo / f.commit / f.source_path
    data = bytearray(bad.read_bytes())
    data[100] ^= 1  # same size, one bit changed
    bad.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(BenchmarkDataError) as e:
        fetch(dest, base_url=mirror.as_uri())
    msg = str(e.value)
    assert f.path in msg and f"expected sha256 {f.sha256}" in msg
    assert f"got sha256 {file_sha256(bad)}" in msg
    assert _files_under(dest) == [] and not dest.exists()

    # over a good copy (force): refused, and the good file is untouched (temp file + os.replace)
    shutil.copyfile(SHARED / f.path, bad)
    fetch(dest, base_url=mirror.as_uri())
    bad.write_bytes(bytes(data) + b"more")  # another size this time
    with pytest.raises(BenchmarkDataError, match="expected sha256"):
        fetch(dest, base_url=mirror.as_uri(), force=True)
    assert verify(dest) == []
    assert sorted(p.name for p in _files_under(dest) if p.name.endswith(".part")) == []


@needs_data
def test_fetch_data_cli(tmp_path, capsys):
    mirror = _mirror(tmp_path)
    dest = tmp_path / "dest"
    assert eval_main(["fetch-data", str(dest), "--base-url", mirror.as_uri()]) == 0
    out = capsys.readouterr().out
    assert out.count("fetched ") == len(FILES) and f"{len(FILES)} benchmark files verified" in out
    assert eval_main(["fetch-data", str(dest), "--base-url", mirror.as_uri()]) == 0
    assert capsys.readouterr().out.count("skipped ") == len(FILES)
    f = FILES[-1]
    (mirror / f.repo / f.commit / f.source_path).write_bytes(b"not the file")
    assert eval_main(["fetch-data", str(dest), "--base-url", mirror.as_uri(), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: refusing ") and f.sha256 in err and "Traceback" not in err


@needs_data
def test_fetch_over_http_and_a_404_fails_at_once(tmp_path):
    import functools
    import http.server
    import threading

    mirror = _mirror(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        dest = tmp_path / "dest"
        assert [a for _, a in fetch(dest, base_url=base)] == ["fetched"] * len(FILES)
        assert verify(dest) == []
        assert (dest / FILES[0].path).stat().st_mode & 0o777 == 0o644
        with pytest.raises(BenchmarkDataError, match=r"cannot download .*: HTTP Error 404"):
            fetch(tmp_path / "other", base_url=base + "/nothing-here")
        assert not (tmp_path / "other").exists()
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------- (d) without the data


def test_missing_data_is_one_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("COMMONTHOUGHTS_SHARED_DATA", str(empty))
    with pytest.raises(BenchmarkDataMissing, match="python -m eval fetch-data") as e:
        get_benchmark("math500").rows()
    assert isinstance(e.value, FileNotFoundError) and "qwen25math-eval/math500/test.jsonl" in str(e.value)
    with pytest.raises(BenchmarkDataMissing, match="no offline mirror"):
        get_benchmark("gpqa_diamond").rows()


def test_validate_without_the_data_says_how_to_fetch_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, COMMONTHOUGHTS_SHARED_DATA=str(empty))
    p = subprocess.run([sys.executable, "-m", "data_pipeline", "validate", str(ROOT / "recipes/math/base.yaml")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "decontaminate: benchmarks:" in lines[0] and "python -m eval fetch-data" in lines[0]
