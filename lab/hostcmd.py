"""Commands on the lab host through the tunnel, as root: a shell line, the database, waiting for
the milters to answer, a step shipped and applied as pulumi-command would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.mail import services
from components.remote.steps import STAGE_ROOT, StepSpec, apply_command
from lab.session import Lab


def sh(lab: Lab, command: str, *, check: bool = True, stdin: str | None = None) -> str:
    return lab.shell.run(["sudo", "-n", "sh", "-c", command], check=check, stdin=stdin).stdout.decode()


PSQL = "docker exec -i sams-postgres psql -q -v ON_ERROR_STOP=1 -U postgres -d sams"


# Rspamd is ready when its controller answers and its milter socket listens (milter_default_action
# is tempfail: a message submitted while it starts gets 451).
WAIT_RSPAMD = f"""for i in $(seq 300); do
  ss -Hxl src {services.POSTFIX_SPOOL}/{services.RSPAMD_MILTER} | grep -q . &&
  python3 -c "import urllib.request as u; u.urlopen('http://{services.RSPAMD_CONTROLLER}/ping', timeout=1)" \\
    2>/dev/null && exit 0
  sleep 0.2
done
exit 1"""


WAIT_OPENDKIM = f"""for i in $(seq 150); do
  ss -Hxl src {services.POSTFIX_SPOOL}/{services.OPENDKIM_MILTER} | grep -q . && exit 0
  sleep 0.2
done
exit 1"""


def run_step(lab: Lab, spec: StepSpec, local: Path, stdin: str | None) -> dict[str, Any]:
    """Ship a staged step and run sams-apply, as the step's CopyToRemote + Command do."""
    lab.shell.copy_to(str(local), STAGE_ROOT)
    out = lab.shell.run(apply_command(spec), stdin=stdin).stdout.decode()
    return dict(json.loads(out.strip().splitlines()[-1]))
