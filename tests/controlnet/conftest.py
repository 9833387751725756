"""Fixtures shared with the control tests."""

from tests.control.conftest import listener  # noqa: F401  (a real UDP listener)
