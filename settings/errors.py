"""One error type for every bad setting: it names the file, the line, the key path and the value."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """('domains', 0, 'users', 1, 'name') -> 'domains[0].users[1].name'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top>"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    value: Any
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        shown = "<missing>" if self.value is _MISSING else repr(self.value)
        return f"{where}: {self.path} = {shown}: {self.message}"


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()
MISSING: Any = _MISSING


class SettingsError(ValueError):
    """Raised before any resource is registered; lists every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"invalid SAMS settings ({len(self.problems)} {noun}):\n{lines}")


def raise_if(problems: Iterable[Problem]) -> None:
    found = list(problems)
    if found:
        raise SettingsError(found)
