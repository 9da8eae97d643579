"""The backup tests' servers: the users tests' OpenBao dev server (tests/users/conftest.py)."""

from tests.users.conftest import bao  # noqa: F401  # a fixture: pytest finds it by name here
