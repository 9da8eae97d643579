"""`doctor`: status checks of a deployed SAMS host, modelled on Mail-in-a-Box's status_checks.py.

A functional core and a thin shell:

- model.py   plain data: the expected state, the observations, findings (ok/warn/fail/unchecked)
- expect.py  settings + stack outputs -> what must be true (the DNS plan, the port policy)
- checks.py  (expected, observations, now) -> findings, each with what is wrong and the fix; pure
- probe.py   the shell: DNS, TCP, TLS and SMTP from outside; host facts over SSH (hostscript.py)
- report.py  the text report, JSON, docs/doctor.md

A top-level package, not components/doctor/: components/ holds what the Pulumi program deploys
(renderers beside the resources that wire them), while the doctor is an operator's tool run
against a deployed stack, from outside it, like docs/generate.py or `python -m lab`.
"""
