"""docs/settings.md, generated from the models themselves: `python -m settings.reference > docs/settings.md`."""

from __future__ import annotations

import types
import typing
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from settings.loader import NAMESPACE, SECRET_KEYS
from settings.mail_list import MailList
from settings.stack import StackConfig
from settings.times import format_duration


def _type_name(a: Any) -> str:
    origin, args = typing.get_origin(a), typing.get_args(a)
    if a is timedelta or (origin is typing.Annotated and args[0] is timedelta):
        return "duration (`48h`, `7d`)"
    if a is datetime or (origin is typing.Annotated and args[0] is datetime):
        return "ISO date or date-time"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{x}`" for x in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(x) for x in args if x is not type(None))
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(a, "__name__", str(a))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        return "(see below)"
    if isinstance(info.default, timedelta):
        return f"`{format_duration(info.default)}`"
    if isinstance(info.default, BaseModel):  # in YAML's flow style, as it is written in the stack file
        fields = info.default.model_dump(mode="json", by_alias=True)
        return "`{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}`"
    return "`" + str(info.default) + "`" if info.default is not None else "none"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _rows(model: type[BaseModel], prefix: str, alias: bool) -> list[str]:
    rows = []
    nested = []
    for name, info in model.model_fields.items():
        key = (info.alias or name) if alias else name
        full = f"{prefix}{key}"
        sub = _model_of(info.annotation)
        doc = (info.description or "").replace("|", "\\|")
        rows.append(
            f"| `{full}` | {_type_name(info.annotation) if not sub else 'section'} | {_default(info)} | {doc} |"
        )
        if sub is not None:
            nested.append((sub, f"{full}."))
    for sub, pre in nested:
        rows += _rows(sub, pre, alias)
    return rows


def reference() -> str:
    head = "| key | type | default | notes |\n| --- | --- | --- | --- |"
    return "\n".join(
        [
            "# SAMS settings reference",
            "",
            "Generated from `settings/stack.py` and `settings/mail_list.py` by `python -m settings.reference`;",
            "a test keeps this file in step with the code.",
            "",
            f"## Stack config (`Pulumi.<stack>.yaml`, namespace `{NAMESPACE}:`)",
            "",
            "Structured keys are set with `pulumi config set --path 'sams:wireguard.hubPublicKey' ...`.",
            "",
            head,
            *_rows(StackConfig, f"{NAMESPACE}:", alias=True),
            "",
            "Secret keys, set with `pulumi config set --secret` and never part of the settings model: "
            + ", ".join(f"`{NAMESPACE}:{k}`" for k in sorted(SECRET_KEYS))
            + ".",
            "",
            "## Mail list (`stacks/<stack>/mail_list.yml`)",
            "",
            "A user may be written as a bare local part (`alice`) or a mapping; quotas are sizes such as",
            "`500M`, `2G` (0 = unlimited).",
            "",
            head,
            *_rows(MailList, "", alias=False),
            "",
        ]
    )


if __name__ == "__main__":
    print(reference(), end="")
