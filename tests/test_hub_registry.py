"""The Hub registry (data_pipeline/hub.py) up to the client call.

No Hub here: `FakeHubApi` stands in for `huggingface_hub.HfApi`. It keeps repos
as commits of whole file trees, records every call, and behaves as the client
and the Hub do where our code depends on it:
- `create_commit` drops additions whose content equals the remote file and,
  when nothing is left, makes no commit and returns the current head
  (huggingface_hub's `HfApi.create_commit`, "Skipping to prevent empty commit");
  a delete and an add of the same path are not a no-op;
- `parent_commit` that is not the head is refused (the Hub answers 412);
- `create_tag` on an existing tag is a 409, and `exist_ok=True` does not move it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import GitRefInfo, GitRefs

from data_pipeline.hub import HubRegistry, hub_api, open_registry
from data_pipeline.registry import LocalRegistry, RegistryError, fp_tag

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests/recipes/good/small.yaml"
FP = "ab" * 32


def _http_error(cls, status: int, message: str):
    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub < 2 uses httpx or requests
        import httpx
    return cls(message, response=httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api")))


class FakeHubApi:
    """Repos as commits of whole trees, served from memory; every call recorded."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.repos: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.before_commit = None  # a hook: runs inside create_commit, before the parent check

    # -- helpers
    def _repo(self, repo_id: str, repo_type: str) -> dict:
        r = self.repos.get((repo_type, repo_id))
        if r is None:
            raise _http_error(RepositoryNotFoundError, 404, f"{repo_type} {repo_id} not found")
        return r

    def _commit(self, r: dict, files: dict[str, bytes], message: str) -> str:
        parent = r["branches"].get("main", "")
        oid = hashlib.sha1(f"{parent}\n{message}\n{sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())}"
                           .encode()).hexdigest()
        r["commits"][oid] = dict(files)
        r["branches"]["main"] = oid
        r["history"].append(oid)
        return oid

    def _rev(self, r: dict, revision: str | None) -> str:
        revision = revision or "main"
        for table in (r["branches"], r["tags"]):
            if revision in table:
                return table[revision]
        if revision in r["commits"]:
            return revision
        raise _http_error(RevisionNotFoundError, 404, f"revision {revision} not found")

    # -- the HfApi methods hub.py uses
    def create_repo(self, repo_id, *, repo_type=None, exist_ok=False, private=None):
        self.calls.append(("create_repo", {"repo_id": repo_id, "repo_type": repo_type, "exist_ok": exist_ok,
                                           "private": private}))
        key = (repo_type, repo_id)
        if key in self.repos:
            if not exist_ok:
                raise _http_error(HfHubHTTPError, 409, "repo exists")
            return
        self.repos[key] = {"commits": {}, "branches": {}, "tags": {}, "history": []}
        self._commit(self.repos[key], {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"},
                     "initial commit")

    def repo_info(self, repo_id, *, repo_type=None, revision=None):
        self.calls.append(("repo_info", {"repo_id": repo_id, "repo_type": repo_type, "revision": revision}))
        return SimpleNamespace(sha=self._rev(self._repo(repo_id, repo_type), revision))

    def list_repo_files(self, repo_id, *, repo_type=None, revision=None):
        self.calls.append(("list_repo_files", {"repo_id": repo_id, "repo_type": repo_type, "revision": revision}))
        r = self._repo(repo_id, repo_type)
        return sorted(r["commits"][self._rev(r, revision)])

    def create_commit(self, repo_id, *, operations, commit_message, repo_type=None, parent_commit=None):
        ops = list(operations)
        self.calls.append(("create_commit", {"repo_id": repo_id, "repo_type": repo_type, "message": commit_message,
                                             "parent_commit": parent_commit,
                                             "adds": sorted(o.path_in_repo for o in ops if hasattr(o, "path_or_fileobj")),
                                             "deletes": sorted(o.path_in_repo for o in ops if not hasattr(o, "path_or_fileobj"))}))
        if self.before_commit:
            self.before_commit()
        r = self._repo(repo_id, repo_type)
        head = r["branches"]["main"]
        if parent_commit is not None and parent_commit != head:
            raise _http_error(HfHubHTTPError, 412, "A commit has happened since. Please refresh and try again.")
        files = dict(r["commits"][head])
        adds = {o.path_in_repo: Path(o.path_or_fileobj).read_bytes() for o in ops if hasattr(o, "path_or_fileobj")}
        deletes = {o.path_in_repo for o in ops if not hasattr(o, "path_or_fileobj")}
        changed = [p for p, b in adds.items() if files.get(p) != b or p in deletes]
        if not changed and not deletes:  # the client's no-op rule: no empty commit, the head is returned
            return SimpleNamespace(oid=head, commit_url=f"https://huggingface.co/{repo_id}/commit/{head}")
        for p in deletes:
            files.pop(p, None)
        files.update(adds)
        oid = self._commit(r, files, commit_message)
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}")

    def list_repo_refs(self, repo_id, *, repo_type=None):
        self.calls.append(("list_repo_refs", {"repo_id": repo_id, "repo_type": repo_type}))
        r = self._repo(repo_id, repo_type)
        return GitRefs(branches=[GitRefInfo(name=b, ref=f"refs/heads/{b}", target_commit=c) for b, c in r["branches"].items()],
                       converts=[], tags=[GitRefInfo(name=t, ref=f"refs/tags/{t}", target_commit=c) for t, c in r["tags"].items()])

    def create_tag(self, repo_id, *, tag, revision=None, repo_type=None, tag_message=None, exist_ok=False):
        self.calls.append(("create_tag", {"repo_id": repo_id, "repo_type": repo_type, "tag": tag, "revision": revision}))
        r = self._repo(repo_id, repo_type)
        if tag in r["tags"]:
            if exist_ok:
                return  # the Hub does not move it
            raise _http_error(HfHubHTTPError, 409, f"tag {tag} exists")
        r["tags"][tag] = self._rev(r, revision)

    def delete_tag(self, repo_id, *, tag, repo_type=None):
        self.calls.append(("delete_tag", {"repo_id": repo_id, "repo_type": repo_type, "tag": tag}))
        del self._repo(repo_id, repo_type)["tags"][tag]

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, cache_dir=None, allow_patterns=None):
        self.calls.append(("snapshot_download", {"repo_id": repo_id, "repo_type": repo_type, "revision": revision,
                                                 "allow_patterns": allow_patterns}))
        r = self._repo(repo_id, repo_type)
        oid = self._rev(r, revision)
        out = Path(cache_dir or self.tmp / "hub-cache") / repo_type / repo_id / oid
        for path, data in r["commits"][oid].items():
            if allow_patterns and not any(fnmatch.fnmatch(path, p) for p in allow_patterns):
                continue
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_bytes(data)
        out.mkdir(parents=True, exist_ok=True)
        return str(out)

    # -- for the assertions
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def of(self, name: str) -> list[dict]:
        return [c[1] for c in self.calls if c[0] == name]


def _stage(tmp: Path, name: str, files: dict[str, str]) -> Path:
    d = tmp / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


@pytest.fixture
def fake(tmp_path: Path) -> FakeHubApi:
    return FakeHubApi(tmp_path)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """One stage cache for the tests that run tests/recipes/good/small.yaml (the second run reads it)."""
    return tmp_path_factory.mktemp("small-cache")


def test_publish_makes_one_commit_tags_it_and_reads_it_back(tmp_path: Path, fake: FakeHubApi):
    reg = HubRegistry(api=fake)
    staged = _stage(tmp_path, "a", {"README.md": "---\nx: 1\n---\n# card\n", "data/train-00000-of-00001.parquet": "1"})
    commit = reg.publish("datasets", "org/name", staged, tags=["v1.0.0", fp_tag(FP)], message="org/name 1.0.0")

    assert fake.of("create_repo") == [{"repo_id": "org/name", "repo_type": "dataset", "exist_ok": True, "private": None}]
    (c,) = fake.of("create_commit")
    assert c["repo_type"] == "dataset" and c["message"] == "org/name 1.0.0"
    assert c["adds"] == ["README.md", "data/train-00000-of-00001.parquet"] and c["deletes"] == []
    assert c["parent_commit"] == fake.repos[("dataset", "org/name")]["history"][0]  # the initial commit
    assert {t["tag"]: t["revision"] for t in fake.of("create_tag")} == {"v1.0.0": commit, fp_tag(FP): commit}
    assert all(t["repo_type"] == "dataset" for t in fake.of("create_tag"))

    assert reg.resolve("datasets", "org/name") == commit
    assert reg.resolve("datasets", "org/name", "v1.0.0") == commit
    assert reg.find_fingerprint("datasets", "org/name", FP) == commit
    snap = reg.snapshot("datasets", "org/name", "v1.0.0")
    assert (snap / "data" / "train-00000-of-00001.parquet").read_text() == "1"
    # a snapshot is downloaded at the commit the revision names, not at the moving name
    assert fake.of("snapshot_download")[-1]["revision"] == commit
    assert reg.card("datasets", "org/name", "v1.0.0") == {"x": 1}
    assert fake.of("snapshot_download")[-1]["allow_patterns"] == ["README.md"]

    assert reg.resolve("datasets", "org/none") is None
    assert reg.resolve("datasets", "org/name", "v9.9.9") is None
    assert reg.resolve("models", "org/name") is None  # another repo type, another repo
    with pytest.raises(RegistryError, match="no revision"):
        reg.snapshot("datasets", "org/name", "v9.9.9")


def test_models_are_model_repos(tmp_path: Path, fake: FakeHubApi):
    reg = HubRegistry(api=fake)
    commit = reg.publish("models", "org/m", _stage(tmp_path, "m", {"README.md": "m", "config.json": "{}"}),
                         tags=["v1"], message="m")
    assert {c["repo_type"] for name, c in fake.calls} == {"model"}
    assert ("model", "org/m") in fake.repos and reg.resolve("models", "org/m", "v1") == commit
    with pytest.raises(RegistryError):
        reg.repo_type("results")


def test_same_content_again_moves_tags_without_a_commit_as_the_local_registry_does(tmp_path: Path, fake: FakeHubApi):
    hub, local = HubRegistry(api=fake), LocalRegistry(tmp_path / "local")
    a = _stage(tmp_path, "a", {"README.md": "one", "data/x.parquet": "1"})
    b = _stage(tmp_path, "b", {"README.md": "two", "data/x.parquet": "2"})
    seen = {}
    for name, reg in (("hub", hub), ("local", local)):
        c1 = reg.publish("datasets", "org/n", a, tags=["v1.0.0", fp_tag(FP)], message="one")
        c1_again = reg.publish("datasets", "org/n", a, tags=["v1.0.1", fp_tag(FP)], message="one again")
        c2 = reg.publish("datasets", "org/n", b, tags=["v1.0.0"], message="two")  # moves v1.0.0
        seen[name] = (c1 == c1_again, c1 != c2, reg.resolve("datasets", "org/n", "v1.0.1") == c1,
                      reg.resolve("datasets", "org/n", "v1.0.0") == c2, reg.find_fingerprint("datasets", "org/n", FP) == c1)
    assert seen["hub"] == seen["local"] == (True, True, True, True, True)
    history = fake.repos[("dataset", "org/n")]["history"]
    assert len(history) == 3  # the initial commit, "one", "two": no empty commit for "one again"
    # the second publish tagged only what was new; the third moved v1.0.0 by delete + create
    assert [t["tag"] for t in fake.of("create_tag")] == ["v1.0.0", fp_tag(FP), "v1.0.1", "v1.0.0"]
    assert [t["tag"] for t in fake.of("delete_tag")] == ["v1.0.0"]


def test_a_revision_is_the_whole_tree(tmp_path: Path, fake: FakeHubApi):
    reg = HubRegistry(api=fake)
    old = reg.publish("datasets", "org/n", _stage(tmp_path, "a", {"README.md": "one", "data/a.parquet": "a",
                                                                  "data/b.parquet": "b"}), tags=["v1"], message="one")
    new = reg.publish("datasets", "org/n", _stage(tmp_path, "b", {"README.md": "two", "data/a.parquet": "a"}),
                      tags=["v2"], message="two")
    assert fake.of("create_commit")[-1]["deletes"] == ["data/b.parquet"]  # stale shard removed, .gitattributes kept
    assert not (reg.snapshot("datasets", "org/n", "v2") / "data" / "b.parquet").exists()
    assert (reg.snapshot("datasets", "org/n", "v1") / "data" / "b.parquet").read_text() == "b"
    assert ".gitattributes" in fake.repos[("dataset", "org/n")]["commits"][new] and old != new


def test_a_concurrent_publish_fails_instead_of_interleaving(tmp_path: Path, fake: FakeHubApi):
    reg = HubRegistry(api=fake)
    first = reg.publish("datasets", "org/n", _stage(tmp_path, "a", {"README.md": "one"}), tags=["v1"], message="one")
    other = _stage(tmp_path, "o", {"README.md": "someone else's"})

    def someone_else_commits():
        fake.before_commit = None
        HubRegistry(api=fake).publish("datasets", "org/n", other, tags=[], message="theirs")

    fake.before_commit = someone_else_commits
    with pytest.raises(HfHubHTTPError, match="commit has happened"):
        reg.publish("datasets", "org/n", _stage(tmp_path, "b", {"README.md": "two"}), tags=["v2"], message="two")
    assert reg.resolve("datasets", "org/n", "v2") is None and reg.resolve("datasets", "org/n", "v1") == first


def test_namespace_and_names(tmp_path: Path, fake: FakeHubApi):
    reg = open_registry("hf://my-lab", api=fake)
    assert isinstance(reg, HubRegistry) and reg.repo_id("local/nano-base") == "my-lab/nano-base"
    commit = reg.publish("datasets", "local/nano-base", _stage(tmp_path, "a", {"README.md": "x"}), tags=[], message="x")
    assert ("dataset", "my-lab/nano-base") in fake.repos and reg.resolve("datasets", "local/nano-base") == commit
    assert open_registry("hf://", api=fake).repo_id("org/x") == "org/x"
    for bad in ("../etc", "org/../x", "a/b/c"):
        with pytest.raises(RegistryError):
            reg.repo_id(bad)
    with pytest.raises(RegistryError):
        open_registry("hf://a/b", api=fake)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match="empty"):
        reg.publish("datasets", "org/x", empty, tags=[], message="x")


def test_open_registry_reads_the_spec_then_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake):
    monkeypatch.delenv("COMMONTHOUGHTS_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_registry(), LocalRegistry) and open_registry().root == (tmp_path / "registry").resolve()
    assert open_registry(str(tmp_path / "r")).root == tmp_path / "r"
    monkeypatch.setenv("COMMONTHOUGHTS_REGISTRY", "hf://team")
    reg = open_registry(api=fake)
    assert isinstance(reg, HubRegistry) and reg.namespace == "team"
    monkeypatch.setenv("COMMONTHOUGHTS_REGISTRY", str(tmp_path / "elsewhere"))
    assert open_registry().root == (tmp_path / "elsewhere").resolve()


def test_the_token_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch):
    secret = "hf_" + "S3cr3tT0k3n" * 3
    monkeypatch.setenv("HF_TOKEN", secret)
    reg = open_registry("hf://team")
    assert reg.api.token == secret
    assert secret not in repr(reg) and secret not in reg.description
    monkeypatch.delenv("HF_TOKEN")
    assert hub_api().token is False  # no fallback to a saved login


def test_a_pipeline_dataset_through_the_hub_registry(tmp_path: Path, fake: FakeHubApi, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture, capsys, small_cache: Path):
    """The real publish path (publish_dataset, the card) into the Hub registry, read
    back the way `sft` reads a dataset; the same files as the local registry; the
    token nowhere."""
    from data_pipeline.cache import StageCache
    from data_pipeline.pipeline import run_data
    from data_pipeline.publish import publish_dataset
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins
    from sft.cli import dataset_mismatch

    secret = "hf_" + "Z9y8X7w6V5u4" * 3
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    load_plugins()
    recipe = load_recipe(SMALL)
    cache = StageCache(small_cache)
    result = run_data(recipe, cache, tasks=1, workers=1, echo=lambda *a, **k: None)
    hub, local = HubRegistry(api=fake), LocalRegistry(tmp_path / "local")
    repo, commit = publish_dataset(recipe, result, cache, hub)
    _, local_commit = publish_dataset(recipe, result, cache, local)

    assert repo == "local/small" and ("dataset", "local/small") in fake.repos
    uploaded = fake.repos[("dataset", "local/small")]["commits"][commit]
    local_files = {p.relative_to(local.repo_dir("datasets", repo)).as_posix(): p.read_bytes()
                   for p in local.repo_dir("datasets", repo).rglob("*") if p.is_file() and ".git" not in p.parts}
    assert {k: v for k, v in uploaded.items() if k != ".gitattributes"} == local_files  # byte for byte

    # what `sft` does with a registry: find the recipe's fingerprint, check the card, read the shards
    assert hub.find_fingerprint("datasets", repo, result.fingerprint) == commit
    assert hub.resolve("datasets", repo, f"v{recipe.version}") == commit
    assert dataset_mismatch(recipe, hub.card("datasets", repo, commit)) is None
    shards = sorted((hub.snapshot("datasets", repo, commit) / "data").glob("*.parquet"))
    import pyarrow.parquet as pq

    assert sum(pq.read_table(s).num_rows for s in shards) == result.stages[-1].stats["rows_out"]

    # publishing the same run again: no new commit
    assert publish_dataset(recipe, result, cache, hub)[1] == commit
    assert len(fake.repos[("dataset", "local/small")]["history"]) == 2

    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err + repr(fake.calls)
    assert secret not in logged
    assert all(secret.encode() not in data for data in uploaded.values())
    assert local_commit  # the local registry published too


def test_run_publishes_to_the_hub_with_registry_hf(tmp_path: Path, fake: FakeHubApi, monkeypatch: pytest.MonkeyPatch,
                                                   capsys, small_cache: Path):
    """`python -m data_pipeline run --registry hf://team` goes through open_registry to the Hub client."""
    import data_pipeline.hub as hub
    from data_pipeline.cli import main as cli_main

    monkeypatch.setattr(hub, "hub_api", lambda: fake)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["run", str(SMALL), "--cache", str(small_cache), "--registry", "hf://team",
                     "--tasks", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    commit = fake.repos[("dataset", "team/small")]["branches"]["main"]
    assert f"published hf://team datasets/team/small @ {commit[:12]}" in out
    assert {t["tag"] for t in fake.of("create_tag")} >= {"v1.0.0"}
    assert not (tmp_path / "registry").exists()  # nothing went to a local registry
