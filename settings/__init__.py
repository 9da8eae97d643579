"""Typed, validated stack settings: the functional core's only input."""

from settings.errors import Problem, SettingsError
from settings.loader import Settings, from_pulumi, load

__all__ = ["Problem", "Settings", "SettingsError", "from_pulumi", "load"]
