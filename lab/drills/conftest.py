"""The drills use the lab tests' one host (lab/tests/conftest.py): the same fixture, not a copy."""

from lab.tests.conftest import lab, pytest_configure

__all__ = ["lab", "pytest_configure"]
