"""Jinja2 rendering for templates that live beside the component owning them.

Templates are named after where they land on the host (`etc/postfix/main.cf.j2`), and every
variable must exist (StrictUndefined): a typo fails the render, never the daemon.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

COMPONENTS = Path(__file__).resolve().parent


@cache
def _env(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # config files, not HTML
    )


def render_in(root: Path, template: str, **context: Any) -> str:
    """Render `template` found under the directory `root`."""
    return _env(root.resolve()).get_template(template).render(**context)


def render(component: str, template: str, **context: Any) -> str:
    """render('firewall', 'etc/nftables.conf.j2', ...) renders components/firewall/etc/nftables.conf.j2."""
    return render_in(COMPONENTS / component, template, **context)
