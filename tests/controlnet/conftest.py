"""Fixtures shared with the control and core tests."""

from tests.control.conftest import listener  # noqa: F401  (a real UDP listener)
from tests.core.controlnet_fixtures import tiny_controlnet_b_dir, tiny_controlnet_dir  # noqa: F401
from tests.daemon.conftest import feedback  # noqa: F401  (records what the daemon sends back)
