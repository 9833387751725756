"""Tiny random ControlNet / depth model fixtures (offline, generated once per test run).

Import the fixtures into a test module: ``from tests.core.controlnet_fixtures import *`` (names
listed in ``__all__``)."""

from __future__ import annotations

import pytest

__all__ = ["tiny_controlnet_dir", "tiny_controlnet_b_dir", "tiny_depth_dir", "cn_components"]


@pytest.fixture(scope="session")
def tiny_controlnet_dir(tiny_model_dir, tmp_path_factory):
    from stream_core.tiny import make_tiny_controlnet

    return make_tiny_controlnet(tmp_path_factory.mktemp("controlnet") / "cn", tiny_model_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_controlnet_b_dir(tiny_model_dir, tmp_path_factory):
    from stream_core.tiny import make_tiny_controlnet

    return make_tiny_controlnet(tmp_path_factory.mktemp("controlnet") / "cn_b", tiny_model_dir, seed=5)


@pytest.fixture(scope="session")
def tiny_depth_dir(tmp_path_factory):
    from stream_core.tiny import make_tiny_depth_model

    return make_tiny_depth_model(tmp_path_factory.mktemp("depth") / "depth")


@pytest.fixture(scope="session")
def cn_components(tiny_components, tiny_controlnet_dir, tiny_controlnet_b_dir, tiny_depth_dir):
    """The tiny model's components with three ControlNets: none (A), none (B), depth (A)."""
    from stream_core.controlnet import ControlNetSpec
    from stream_core.models import with_controlnets

    return with_controlnets(tiny_components, [
        ControlNetSpec(str(tiny_controlnet_dir), 1.0),
        ControlNetSpec(str(tiny_controlnet_b_dir), 0.7),
        ControlNetSpec(str(tiny_controlnet_dir), 0.9, "depth", depth_model=str(tiny_depth_dir)),
    ])
