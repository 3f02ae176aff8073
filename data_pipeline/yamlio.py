"""Safe YAML loading that remembers where every value came from.

Recipes are data from strangers (pull requests), so loading one must never run
code or blow up: PyYAML's SafeLoader refuses python tags; we also refuse
anchors/aliases (the "billion laughs" bomb; `extends:` is the way to share
configuration), duplicate keys (PyYAML silently keeps the last) and files over
`MAX_BYTES`. PyYAML does not keep positions in the objects it builds, so we
compose the node graph ourselves and record the line of every field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from data_pipeline.errors import RecipeError

MAX_BYTES = 1 << 20

Path_ = tuple[Any, ...]


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def load_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Return (data, lines) where lines maps field paths to 1-based line numbers."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError.one(path, None, "", "file not found") from None
    except OSError as e:
        raise RecipeError.one(path, None, "", f"cannot read file: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError.one(path, None, "", f"file is {len(raw)} bytes; recipes are limited to {MAX_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError.one(path, None, "", f"not UTF-8 text ({e.reason} at byte {e.start})") from None

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise RecipeError.one(
                    path, _line(event.start_mark), "",
                    "YAML anchors and aliases are not allowed in recipes (use `extends:` to share settings)",
                )
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, {}
            lines: dict[Path_, int] = {(): _line(node.start_mark)}
            _walk(path, node, (), lines)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.constructor.ConstructorError as e:
        msg = e.problem or str(e)
        if "tag" in msg:
            msg = f"{msg}; recipes are plain data and allow only standard YAML tags"
        raise RecipeError.one(path, _line(e.problem_mark), "", msg) from None
    except yaml.MarkedYAMLError as e:
        context = f" ({e.context} on line {_line(e.context_mark)})" if e.context and e.context_mark else ""
        raise RecipeError.one(path, _line(e.problem_mark), "", f"invalid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise RecipeError.one(path, None, "", f"invalid YAML: {e}") from None
    return data, lines


def _walk(path: Path, node: yaml.Node, at: Path_, lines: dict[Path_, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise RecipeError.one(path, _line(key_node.start_mark), _dotted(at), "mapping keys must be plain scalars")
            key = key_node.value
            line = _line(key_node.start_mark)
            if key in seen:
                raise RecipeError.one(path, line, _dotted(at + (key,)), f"duplicate key (first defined on line {seen[key]})")
            seen[key] = line
            lines[at + (key,)] = line
            _walk(path, value_node, at + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[at + (i,)] = _line(item.start_mark)
            _walk(path, item, at + (i,), lines)


def _dotted(at: Path_) -> str:
    return ".".join(str(p) for p in at)
