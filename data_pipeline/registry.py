"""The local registry: a folder with the Hub's layout and the Hub's revisions.

`<root>/datasets/<org>/<name>/` and `<root>/models/<org>/<name>/` are git
repositories, as repos on the Hub are: the working tree holds the latest
revision (`data/*.parquet` and a `README.md` card whose YAML declares the
configs, so `datasets.load_dataset(folder)` reads it and an upload to the Hub
is a copy), every publish is a commit, and versions are tags (`v<version>`,
plus `fp-<fingerprint>` so a run can ask for "this recipe at this
fingerprint"). Readers that need a fixed revision get an immutable export of
it (`snapshot`), never the working tree that a concurrent publish may be
rewriting. An interrupted publish leaves HEAD untouched and is cleaned up by
the next one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import yaml

Kind = Literal["datasets", "models"]
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GIT = ["git", "-c", "user.name=CommonThoughts", "-c", "user.email=registry@commonthoughts.invalid",
        "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "init.defaultBranch=main"]


class RegistryError(RuntimeError):
    pass


def default_registry_root() -> Path:
    return Path(os.environ.get("COMMONTHOUGHTS_REGISTRY", Path.cwd() / "registry")).resolve()


def fp_tag(fingerprint: str) -> str:
    return f"fp-{fingerprint[:16]}"


class LocalRegistry:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or default_registry_root())

    # -- paths
    def repo_dir(self, kind: Kind, repo: str) -> Path:
        if not _REPO_RE.match(repo) or ".." in repo:
            raise RegistryError(f"invalid repo name {repo!r}")
        return self.root / kind / repo

    def _git(self, d: Path, *args: str, check: bool = True) -> str:
        p = subprocess.run([*_GIT, "-C", str(d), *args], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RegistryError(f"git {' '.join(args)} in {d} failed: {p.stderr.strip()}")
        return p.stdout.strip()

    # -- read
    def resolve(self, kind: Kind, repo: str, revision: str = "main") -> str | None:
        """Commit of a branch, tag or commit; None if the repo or the revision is absent."""
        d = self.repo_dir(kind, repo)
        if not (d / ".git").exists():
            return None
        out = self._git(d, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
        return out or None

    def find_fingerprint(self, kind: Kind, repo: str, fingerprint: str) -> str | None:
        return self.resolve(kind, repo, fp_tag(fingerprint))

    def snapshot(self, kind: Kind, repo: str, revision: str = "main") -> Path:
        """An immutable folder with the repo's files at `revision`."""
        commit = self.resolve(kind, repo, revision)
        if commit is None:
            raise RegistryError(f"{kind[:-1]} {repo!r} has no revision {revision!r} in {self.root}")
        out = self.root / ".snapshots" / kind / repo / commit
        if out.is_dir():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{commit[:12]}."))
        d = self.repo_dir(kind, repo)
        archive = subprocess.run([*_GIT, "-C", str(d), "archive", "--format=tar", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        try:
            os.rename(tmp, out)
        except OSError:  # a concurrent reader exported it first
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def card(self, kind: Kind, repo: str, revision: str = "main") -> dict:
        return read_card_data(self.snapshot(kind, repo, revision) / "README.md")

    # -- write
    def publish(self, kind: Kind, repo: str, staged: Path, *, tags: list[str], message: str) -> str:
        """Make `staged` (a folder) the new revision of `repo`; returns its commit.
        Publishing identical content again creates no commit, only moves the tags."""
        d = self.repo_dir(kind, repo)
        d.mkdir(parents=True, exist_ok=True)
        if not (d / ".git").exists():
            self._git(d, "init", "-q")
        elif self.resolve(kind, repo, "HEAD"):
            self._git(d, "reset", "-q", "--hard", "HEAD")  # undo an interrupted publish
        self._git(d, "clean", "-qfdx")
        for child in d.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.copytree(staged, d, dirs_exist_ok=True)
        self._git(d, "add", "-A")
        if self._git(d, "status", "--porcelain"):
            self._git(d, "commit", "-q", "-m", message)
        commit = self._git(d, "rev-parse", "HEAD")
        for tag in tags:
            self._git(d, "tag", "-f", tag, commit)
        return commit


def read_card_data(path: Path) -> dict:
    """The YAML front matter of a README.md card."""
    text = path.read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    return yaml.safe_load(m.group(1)) if m else {}
