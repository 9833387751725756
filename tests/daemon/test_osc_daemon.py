"""The OSC surface against the running daemon and the real pipeline (tiny model), over real UDP."""

from __future__ import annotations

import math
import time

import pytest
import torch
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.codec import encode_message
from bridge.params import PARAMS
from stream_core.schedule import strength_to_t_index_list
from tests.control.cases import BAD
from tests.daemon.conftest import wait_until


@pytest.fixture(scope="module")
def client(daemon):
    return SimpleUDPClient(*daemon.osc.address)


def send(client, address, *args):
    client.send_message(address, list(args))


def test_every_parameter_reaches_the_pipeline_and_is_echoed(daemon, client, feedback):
    pipe = daemon.engine.pipeline
    feedback.clear()
    checks = {
        "/sd/guidance": (2.5, lambda: pipe.guidance_scale == 2.5),
        "/sd/delta": (0.7, lambda: pipe.delta == pytest.approx(0.7)),
        "/sd/strength": (0.8, lambda: pipe.t_index_list == strength_to_t_index_list(0.8, 3)),
        "/sd/seed": (1234, lambda: pipe.seed == 1234),
        "/sd/filter/threshold": (0.97, lambda: pipe.filter.threshold == pytest.approx(0.97)),
        "/sd/smoothing": (0.6, lambda: pipe.smoothing == pytest.approx(0.6)),
        "/sd/mix": (0.25, lambda: daemon.controller.values["mix"] == 0.25),
        "/sd/transition": (1.5, lambda: daemon.controller.values["transition"] == 1.5),
        "/sd/prompt/mix": (0.4, lambda: daemon.controller.values["prompt_mix"] == pytest.approx(0.4)),
    }
    for address, (value, ok) in checks.items():
        send(client, address, value)
        assert wait_until(ok), address
        echoed = feedback.wait_for(address)
        assert echoed[0] == pytest.approx(value)
    send(client, "/sd/bypass", 1)
    assert wait_until(lambda: daemon.controller.values["bypass"] is True)
    send(client, "/sd/bypass", False)
    assert wait_until(lambda: daemon.controller.values["bypass"] is False)
    send(client, "/sd/norm/guidance", 0.5)  # default control range 0..5 -> 2.5
    assert wait_until(lambda: pipe.guidance_scale == pytest.approx(2.5))
    feedback.wait_for("/sd/norm/guidance", lambda a: a[0] == pytest.approx(0.5))
    send(client, "/sd/guidance", 1.2)
    send(client, "/sd/filter/threshold", 1.0)
    send(client, "/sd/smoothing", 0.0)
    send(client, "/sd/mix", 1.0)
    assert wait_until(lambda: daemon.controller.values["mix"] == 1.0)


def test_prompt_changes_conditioning_without_restart(daemon, client, feedback):
    pipe = daemon.engine.pipeline
    before = pipe.prompt_embeds.clone()
    calls_before = pipe.calls
    send(client, "/sd/prompt", "a violet jellyfish in deep water")
    assert wait_until(lambda: not torch.equal(pipe.prompt_embeds, before), 5)
    expected = daemon.engine.encoder.encode("a violet jellyfish in deep water")
    torch.testing.assert_close(pipe.prompt_embeds, expected)
    send(client, "/sd/negative_prompt", "blurry, text")
    neg = daemon.engine.encoder.encode("blurry, text")
    assert wait_until(lambda: torch.equal(pipe.negative_prompt_embeds, neg), 5)
    assert pipe.calls > calls_before and pipe._primed  # the stream kept running, no re-prime


def test_ab_crossfader_slerps_embeddings(daemon, client):
    from stream_core.blend import slerp

    pipe = daemon.engine.pipeline
    enc = daemon.engine.encoder
    send(client, "/sd/prompt/a", "a red apple")
    send(client, "/sd/prompt/b", "a green pear")
    send(client, "/sd/prompt/mix", 0.3)
    target = slerp(enc.encode("a red apple"), enc.encode("a green pear"), 0.3)
    assert wait_until(lambda: torch.allclose(pipe.prompt_embeds, target, atol=1e-5), 5)
    send(client, "/sd/prompt/b", "")
    send(client, "/sd/prompt/a", "")
    assert wait_until(lambda: daemon.controller.values["prompt_a"] == "" == daemon.controller.values["prompt_b"])


def _some_bad_cases():
    """A few rejections per address family (the full table runs in tests/control)."""
    picked, per = [], {}
    for c in BAD:
        if c[0] in ("/sd/guidance", "/sd/seed", "/sd/strength", "/sd/bypass", "/sd/prompt", "/sd/preset"):
            if per.get(c[0], 0) < 2:
                per[c[0]] = per.get(c[0], 0) + 1
                picked.append(c)
    return picked


@pytest.mark.parametrize("address,typed,reason", _some_bad_cases())
def test_rejections_change_nothing_and_reply_error(daemon, feedback, address, typed, reason):
    import socket

    time.sleep(0.25)  # /sd/error replies are rate-limited (5/s, burst 10): let the bucket refill
    before = dict(daemon.controller.values)
    batches = daemon.controller.applied_batches
    feedback.clear()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(encode_message(address, *[_arg(t, v) for t, v in typed]), daemon.osc.address)
    s.close()
    got = feedback.wait_for("/sd/error", lambda a: a[0] == address)
    assert reason.split()[0].lower() in got[1].lower()
    time.sleep(0.05)
    assert daemon.controller.values == before
    assert daemon.controller.applied_batches == batches


def _arg(tag, value):
    from bridge.control.codec import Impulse

    if tag in ("T", "F"):
        return tag == "T"
    if tag == "N":
        return None
    if tag == "I":
        return Impulse()
    if tag == "f":
        return float(value)
    if tag == "h":
        return int(value)
    if tag == "d":
        return float(value)
    return value


def test_touchdesigner_bundle_applies_in_one_frame(daemon, client):
    pipe = daemon.engine.pipeline
    batches = daemon.controller.applied_batches
    b = OscBundleBuilder(IMMEDIATELY)
    for address, value in (("/sd/guidance", 3.0), ("/sd/delta", 0.9), ("/sd/seed", 77)):
        m = OscMessageBuilder(address)
        m.add_arg(value)
        b.add_content(m.build())
    client.send(b.build())
    assert wait_until(lambda: pipe.seed == 77)
    assert pipe.guidance_scale == 3.0 and pipe.delta == pytest.approx(0.9)
    assert daemon.controller.applied_batches == batches + 1
    # one bad element: nothing of the bundle is applied
    b = OscBundleBuilder(IMMEDIATELY)
    for address, value in (("/sd/guidance", 4.0), ("/sd/delta", "oops")):
        m = OscMessageBuilder(address)
        m.add_arg(value)
        b.add_content(m.build())
    client.send(b.build())
    time.sleep(0.2)
    assert pipe.guidance_scale == 3.0 and daemon.controller.applied_batches == batches + 1


def test_far_future_timetag_is_applied_now(daemon, client):
    b = OscBundleBuilder(time.time() + 3600)
    m = OscMessageBuilder("/sd/delta")
    m.add_arg(0.33)
    b.add_content(m.build())
    client.send(b.build())
    assert wait_until(lambda: daemon.engine.pipeline.delta == pytest.approx(0.33), 1.0)


def test_accepted_parameter_applies_on_next_frame(daemon, client):
    """Record the guidance each frame starts with; after the controller's tick that follows the
    submission, the very next frame uses the new value."""
    engine, ctrl = daemon.engine, daemon.controller
    log: list[tuple[float, str, float]] = []
    server = daemon.osc
    orig_process, orig_tick, orig_submit = engine.process, ctrl.tick, server.on_batch

    def process(frames):
        log.append((time.monotonic(), "frame", engine.pipeline.guidance_scale))
        return orig_process(frames)

    def tick(now=None):
        log.append((time.monotonic(), "tick", 0.0))
        return orig_tick(now)

    def submit(batch):
        orig_submit(batch)
        log.append((time.monotonic(), "submit", 0.0))

    engine.process, ctrl.tick, server.on_batch = process, tick, submit
    try:
        send(client, "/sd/guidance", 4.25)
        assert wait_until(lambda: any(k == "frame" and g == 4.25 for _, k, g in log), 3)
    finally:
        server.on_batch = orig_submit
        del engine.process, ctrl.tick
    i_sub = next(i for i, e in enumerate(log) if e[1] == "submit")
    i_tick = next(i for i in range(i_sub, len(log)) if log[i][1] == "tick")
    first_frame = next(e for e in log[i_tick:] if e[1] == "frame")
    assert first_frame[2] == 4.25


def test_state_dump_sends_every_parameter(daemon, client, feedback):
    feedback.clear()
    send(client, "/sd/state")
    for spec in PARAMS.values():
        feedback.wait_for(spec.address)


def test_status_is_sent_periodically(daemon, feedback):
    feedback.clear()
    for key in ("fps", "latency_ms", "source", "preset", "dropped"):
        feedback.wait_for(f"/sd/status/{key}", timeout=3)
    assert feedback.values("/sd/status/source")[-1][0] == "live"
    assert feedback.values("/sd/status/fps")[-1][0] > 0
    assert daemon.osc.stats()["accepted"] > 0


def test_dropped_status_and_counters_exposed(daemon):
    st = daemon.status()
    assert set(st) >= {"fps", "latency_ms", "source", "preset", "dropped"}
    assert math.isfinite(st["latency_ms"]) and st["latency_ms"] > 0


def test_seed_crossfader_slerps_the_noise_without_a_restart(daemon, client, feedback):
    from stream_core.blend import slerp

    pipe = daemon.engine.pipeline
    send(client, "/sd/seed", 11)
    assert wait_until(lambda: pipe.seed == 11)
    n11, n77 = pipe.noise_for_seed(11), pipe.noise_for_seed(77)
    frames = daemon.frames_rendered
    send(client, "/sd/seed/b", 77)
    send(client, "/sd/seed/mix", 0.5)
    want = slerp(n11.float(), n77.float(), 0.5).to(n11.dtype)
    assert wait_until(lambda: torch.allclose(pipe.noise, want, atol=1e-6))
    assert pipe.seed == 11  # seed A stays the seed; the mix is on top
    feedback.wait_for("/sd/seed/mix", lambda a: a[0] == pytest.approx(0.5))
    send(client, "/sd/seed/mix", 1.0)
    assert wait_until(lambda: torch.equal(pipe.noise, n77))
    send(client, "/sd/seed/mix", 0.0)
    assert wait_until(lambda: torch.equal(pipe.noise, n11))
    assert wait_until(lambda: daemon.frames_rendered > frames + 2)  # frames kept flowing, buffer kept
    send(client, "/sd/seed", PARAMS["seed"].default)
