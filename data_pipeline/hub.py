"""The Hugging Face Hub as the registry: the same interface as `LocalRegistry`
(registry.py), so publishing, `sft` and `eval` run the same code up to the
client call. docs/hub.md says how to use it.

- `publish(kind, repo, staged, tags, message)` makes the staged folder the new
  revision of the repo in ONE commit (`HfApi.create_commit` with an add for
  every staged file and a delete for every file of the previous revision that
  the staged folder lacks), then points each tag at it. Publishing identical
  content again makes no commit (the client drops unchanged files and returns
  the current head) and only moves the tags, as `LocalRegistry` does.
  Why not `upload_folder`: with `hf_xet` installed it streams a large folder
  in several commits (batches of files, or whatever is ready after five
  minutes), so `main` would show half a dataset in between; one commit is
  atomic. `parent_commit` makes a concurrent publish to the same repo fail
  instead of interleaving.
- Tags: `v<version>` and `fp-<fingerprint>`. The Hub's `create_tag` does not
  move an existing tag (`exist_ok=True` only silences the conflict), so a tag
  that points elsewhere is deleted and created again at the new commit.
- `resolve` maps a branch, tag or commit to a commit (`repo_info(...).sha`);
  `snapshot` downloads that commit (`snapshot_download(revision=<commit>)`,
  immutable in the Hugging Face cache); `card` reads the README.md's YAML.
- The token comes from `HF_TOKEN` in the environment only (the client's saved
  login is not used) and is never written: not to the staged folder, the
  card, a log line or an error message.

`open_registry(spec)` picks the registry: `hf://` or `hf://<namespace>` for
the Hub (a namespace replaces the org of every repo name, so `local/nano-base`
publishes to `<namespace>/nano-base`), anything else a local registry folder.
Without a spec it reads `COMMONTHOUGHTS_REGISTRY` the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from data_pipeline.registry import Kind, LocalRegistry, RegistryError, _REPO_RE, default_registry_root, fp_tag, \
    read_card_data

HUB_SCHEME = "hf://"
REPO_TYPES: dict[str, str] = {"datasets": "dataset", "models": "model"}
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def hub_api() -> Any:
    """An `HfApi` whose token is `HF_TOKEN` from the environment, or none at all
    (`token=False`: the client's saved login is never used)."""
    from huggingface_hub import HfApi

    return HfApi(token=os.environ.get("HF_TOKEN") or False)


class HubRegistry:
    """A registry on the Hugging Face Hub (or any client with `HfApi`'s methods)."""

    def __init__(self, namespace: str | None = None, *, api: Any = None, root: Path | None = None,
                 cache_dir: Path | None = None, private: bool | None = None):
        if namespace is not None and not _NAMESPACE_RE.match(namespace):
            raise RegistryError(f"invalid Hub namespace {namespace!r}")
        self.namespace = namespace
        self.api = api if api is not None else hub_api()
        # Local files that belong with the registry but are not on the Hub (eval results).
        self.root = Path(root) if root is not None else Path.cwd() / "registry"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None  # None: the Hugging Face cache
        self.private = private

    def __repr__(self) -> str:  # never shows the client (which holds the token)
        return f"HubRegistry(namespace={self.namespace!r})"

    @property
    def description(self) -> str:
        return f"{HUB_SCHEME}{self.namespace or ''}"

    # -- names
    def repo_id(self, repo: str) -> str:
        """The Hub repo id of a registry repo name (`org/name`, the org replaced by the namespace)."""
        if not _REPO_RE.match(repo) or ".." in repo:
            raise RegistryError(f"invalid repo name {repo!r}")
        return f"{self.namespace}/{repo.split('/', 1)[1]}" if self.namespace else repo

    @staticmethod
    def repo_type(kind: Kind) -> str:
        try:
            return REPO_TYPES[kind]
        except KeyError:
            raise RegistryError(f"unknown kind {kind!r}; known: {sorted(REPO_TYPES)}") from None

    # -- read
    def resolve(self, kind: Kind, repo: str, revision: str = "main") -> str | None:
        """Commit of a branch, tag or commit; None if the repo or the revision is absent."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = self.api.repo_info(self.repo_id(repo), repo_type=self.repo_type(kind), revision=revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None
        return info.sha

    def find_fingerprint(self, kind: Kind, repo: str, fingerprint: str) -> str | None:
        return self.resolve(kind, repo, fp_tag(fingerprint))

    def snapshot(self, kind: Kind, repo: str, revision: str = "main", *,
                 allow_patterns: list[str] | None = None) -> Path:
        """A folder with the repo's files at `revision` (downloaded at the commit the
        revision names now, so a concurrent publish cannot mix two revisions)."""
        commit = self.resolve(kind, repo, revision)
        if commit is None:
            raise RegistryError(f"{kind[:-1]} {self.repo_id(repo)!r} has no revision {revision!r} on the Hub")
        kwargs: dict[str, Any] = {"repo_type": self.repo_type(kind), "revision": commit}
        if self.cache_dir is not None:
            kwargs["cache_dir"] = str(self.cache_dir)
        if allow_patterns is not None:
            kwargs["allow_patterns"] = allow_patterns
        return Path(self.api.snapshot_download(self.repo_id(repo), **kwargs))

    def card(self, kind: Kind, repo: str, revision: str = "main") -> dict:
        folder = self.snapshot(kind, repo, revision, allow_patterns=["README.md"])
        return read_card_data(folder / "README.md") if (folder / "README.md").is_file() else {}

    # -- write
    def publish(self, kind: Kind, repo: str, staged: Path, *, tags: list[str], message: str) -> str:
        """Make `staged` (a folder) the new revision of `repo` in one commit; returns
        the commit. Publishing identical content again creates no commit, only moves the tags."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        repo_id, repo_type = self.repo_id(repo), self.repo_type(kind)
        staged = Path(staged)
        files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        if not files:
            raise RegistryError(f"nothing to publish: {staged} is empty")
        self.api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=self.private)
        head = self.resolve(kind, repo, "main")
        remote = set(self.api.list_repo_files(repo_id, repo_type=repo_type, revision=head)) if head else set()
        stale = sorted(remote - set(files) - {".gitattributes"})
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(staged / f)) for f in files]
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        info = self.api.create_commit(repo_id, operations=operations, commit_message=message, repo_type=repo_type,
                                      parent_commit=head)
        commit = info.oid
        self._tag(repo_id, repo_type, commit, tags, message)
        return commit

    def _tag(self, repo_id: str, repo_type: str, commit: str, tags: list[str], message: str) -> None:
        refs = self.api.list_repo_refs(repo_id, repo_type=repo_type)
        existing = {t.name: t.target_commit for t in refs.tags}
        for tag in tags:
            if existing.get(tag) == commit:
                continue
            if tag in existing:  # the Hub does not move a tag: delete it, then create it at the new commit
                self.api.delete_tag(repo_id, tag=tag, repo_type=repo_type)
            self.api.create_tag(repo_id, tag=tag, revision=commit, repo_type=repo_type, tag_message=message)


def parse_registry_spec(spec: str) -> str | None:
    """The namespace of an `hf://[namespace]` spec (None for bare `hf://`)."""
    rest = spec[len(HUB_SCHEME):].strip("/")
    if rest and not _NAMESPACE_RE.match(rest):
        raise RegistryError(f"{spec!r} is not hf:// or hf://<namespace>")
    return rest or None


def open_registry(spec: str | Path | None = None, *, api: Any = None) -> LocalRegistry | HubRegistry:
    """The registry a CLI's `--registry` (or `COMMONTHOUGHTS_REGISTRY`) names:
    `hf://[namespace]` for the Hub, a folder otherwise (default `./registry`)."""
    if spec is None:
        spec = os.environ.get("COMMONTHOUGHTS_REGISTRY")
    if spec is not None and str(spec).startswith(HUB_SCHEME):
        return HubRegistry(parse_registry_spec(str(spec)), api=api)
    if spec is None:
        return LocalRegistry(default_registry_root())
    return LocalRegistry(Path(spec))
