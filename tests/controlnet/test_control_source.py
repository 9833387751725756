"""A second source for control frames over real NDI (loopback, in this process): the sender
vanishes and comes back; one ControlNet holds its last control frame, the other fades out and
back in. The states, factors and frames are those the render loop would use."""

from __future__ import annotations

import uuid

import pytest

from bridge.config import DaemonConfig
from bridge.controlnet import ControlNetFeed, make_source_worker
from bridge.runtime.packet import FramePacket
from tests.daemon.conftest import wait_until

pytest.importorskip("NDIlib", reason="ndi-python is not installed (pip install streambridge[ndi])")

from tests.daemon.test_ndi_e2e import RawSender

W, H = 48, 32


def test_loss_holds_or_fades_and_recovers() -> None:
    import numpy as np

    name = f"sbctl-{uuid.uuid4().hex[:8]}"
    source = {"type": "ndi", "name": name, "discovery_timeout": 2.0}
    cfgs = DaemonConfig.model_validate({"controlnets": [
        {"model": "a", "source": source, "on_loss": "hold"},
        {"model": "b", "source": source, "on_loss": "fade", "fade_s": 0.3},
    ]}).controlnets
    states: list[tuple[int, str]] = []

    def make(index, cfg, mailbox, metrics, derive):
        return make_source_worker(index, cfg, mailbox, metrics, derive, size=(W, H), resize="fill",
                                  on_state=lambda i, state, detail: states.append((i, state)))

    feed = ControlNetFeed(cfgs, (W, H), make_worker=make)
    probe = FramePacket(np.zeros((H, W, 3), np.uint8), 0.0, 0)
    sender = RawSender(name)
    sender.start()
    feed.start()
    try:
        def both_flowing() -> bool:
            feed.pair(probe)
            return feed.gains() == [1.0, 1.0]

        assert wait_until(both_flowing, 15), feed.details()
        held, faded = feed.pair(probe)
        assert held.shape == (H, W, 3) and held.max() > 0 and faded.max() > 0
        assert feed.status()["control/0/state"] == "live"

        sender.stop()
        assert wait_until(lambda: all(w.state in ("lost", "reconnecting") for w in feed.workers()), 3), feed.details()
        last_hold = feed.pair(probe)[0]
        assert wait_until(lambda: feed.gains()[1] == 0.0, 2)
        gains = feed.gains()
        assert gains == [1.0, 0.0]  # hold keeps the scale, fade is down to 0
        assert feed.pair(probe)[0] is last_hold  # the last control frame, held
        status = feed.status()
        assert status["control/0/holding"] == 1 and status["control/1/holding"] == 0
        assert status["control/1/state"] in ("lost", "reconnecting")
        for i in (0, 1):  # reported through the state callback (the daemon sends it on), which
            # may run a moment after the worker's state changed
            assert wait_until(lambda i=i: bool({s for j, s in states if j == i} & {"lost", "reconnecting"}), 2), states

        sender = RawSender(name)
        sender.start()
        assert wait_until(lambda: all(w.state == "live" for w in feed.workers()), 15), feed.details()
        assert wait_until(both_flowing, 3)
        assert feed.pair(probe)[0] is not last_hold or feed.details()[0]["frames"] > 1
        assert feed.status()["control/0/holding"] == 0
    finally:
        sender.stop()
        left = feed.stop()
    assert left == []  # no worker left inside a backend call
