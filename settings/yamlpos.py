"""YAML loading that remembers the line of every key, so errors can point into the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from settings.errors import MISSING, Path, Problem, SettingsError


@dataclass
class Located:
    """Plain Python data plus a map from key path to 1-based line number."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """The line of the deepest known ancestor of `path` (a missing key points at its parent)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def value_at(self, path: Path) -> Any:
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return MISSING
        return node


# libyaml's loader when the wheel has it: a 10,000-user list must stay well under a second.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _walk(loader: Any, node: yaml.Node, path: Path, lines: dict[Path, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve YAML merge keys (<<) the way safe_load would
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if key in out:
                raise _DuplicateKey(path + (key,), key_node.start_mark.line + 1, key)
            out[key] = _walk(loader, value_node, path + (key,), lines)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, path + (i,), lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node)


class _DuplicateKey(Exception):
    def __init__(self, path: Path, line: int, key: Any):
        self.path, self.line, self.key = path, line, key


def load_located(text: str, filename: str) -> Located:
    """Parse YAML text; a syntax error or a duplicate key becomes a SettingsError naming the line."""
    from settings.errors import format_path

    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SettingsError(
            [Problem(filename, line, "<yaml>", MISSING, f"YAML syntax error: {exc.problem or exc}")]
        ) from None
    if root is None:
        return Located({}, {(): 1})
    lines: dict[Path, int] = {}
    try:
        data = _walk(loader, root, (), lines)
    except _DuplicateKey as dup:
        raise SettingsError(
            [Problem(filename, dup.line, format_path(dup.path), dup.key, "key appears twice")]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SettingsError(
            [Problem(filename, mark.line + 1 if mark else None, "<yaml>", MISSING, str(exc.problem))]
        ) from None
    finally:
        loader.dispose()
    return Located(data, lines)
