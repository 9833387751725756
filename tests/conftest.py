"""Shared fixtures: a tiny random SD model generated once per test session, fully offline."""

from __future__ import annotations

import os

# torch's OpenMP workers busy-wait between ops by default; on a shared 2-core machine (and beside
# the daemon's own threads in these tests) that turns a 50 ms call into seconds
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_engine_cache(tmp_path_factory):
    """Tests never read or write the user's engine cache: acceleration ``auto`` (the default)
    looks for cached engines there."""
    if "STREAMBRIDGE_CACHE" not in os.environ:
        os.environ["STREAMBRIDGE_CACHE"] = str(tmp_path_factory.mktemp("streambridge-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from stream_core.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_components(tiny_model_dir):
    import torch

    from stream_core.models import ModelSpec, load_components

    # one intra-op thread: the daemon tests run several threads beside torch, and OpenMP
    # workers spinning on a busy 2-core machine cost far more than the second core gives
    torch.set_num_threads(1)
    return load_components(ModelSpec(model=str(tiny_model_dir), device="cpu", dtype="float32"))
