"""One reader of a stack file for the tools: the doctor, the docs generator, the password-rotation
CLI and the DNS checklist read `Pulumi.<stack>.yaml` here, as the engine would hand its config to
the program, and validate it with the program's own loader.

A tool never sees a secret from the stack file (they are encrypted there, and only the Pulumi CLI
can read them); the loader's checks that a required secret is set belong to `pulumi up`, so a tool
reads a stack without them. A tool that needs a secret takes it from its own environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from settings.loader import Settings, load


def stack_file_config(stack: str, project_dir: Path) -> dict[str, str]:
    """The `config:` map of Pulumi.<stack>.yaml as the engine hands it over (JSON for objects)."""
    data = yaml.safe_load((project_dir / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {k: encode_config(v) for k, v in (data.get("config") or {}).items()}


def encode_config(value: Any) -> str:
    """A config value as the engine passes it: objects and lists as JSON, booleans in lowercase."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_stack(stack: str, project_dir: Path) -> Settings:
    """The stack's validated settings for a tool: every check but the presence of secrets."""
    return load(stack, stack_file_config(stack, project_dir), project_dir, secrets_required=False)
