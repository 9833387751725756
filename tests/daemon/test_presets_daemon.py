"""Presets through the running daemon: recall, echo, morphs, cold refusal, save, hot reload."""

from __future__ import annotations

import os
import time

import pytest
import torch
import yaml
from pythonosc.udp_client import SimpleUDPClient

from stream_core.schedule import strength_to_t_index_list
from tests.daemon.conftest import wait_until


@pytest.fixture(scope="module")
def client(daemon):
    return SimpleUDPClient(*daemon.osc.address)


def send(client, address, *args):
    client.send_message(address, list(args))


def load(preset_dir, name):
    return yaml.safe_load((preset_dir / f"{name}.yaml").read_text())


def test_prewarmed_recall_never_encodes(daemon):
    """Every preset's prompts were encoded at start-up: all are in the cache already."""
    for _, preset in daemon.presets.items():
        for text in preset.prompt_texts():
            assert text in daemon.cache


def test_recall_by_name_cuts_and_echoes_every_change(daemon, client, feedback, preset_dir):
    send(client, "/sd/transition", 0.0)
    p = load(preset_dir, "ink-wash")
    p_cut = {**p, "transition": 0}
    (preset_dir / "ink-cut.yaml").write_text(yaml.safe_dump(p_cut))
    assert wait_until(lambda: daemon.presets.get("ink-cut") is not None, 3)
    assert wait_until(lambda: all(t in daemon.cache for t in daemon.presets.get("ink-cut").prompt_texts()), 10)
    feedback.clear()
    send(client, "/sd/preset", "ink-cut")
    pipe = daemon.engine.pipeline
    target = daemon.engine.encoder.encode(p["prompt"])
    # the whole recall lands within one controller tick (on the render thread): poll until every
    # part of it is seen, since this thread may look in the middle of that tick
    def landed() -> bool:
        return (torch.allclose(pipe.prompt_embeds, target, atol=1e-6)
                and pipe.guidance_scale == pytest.approx(p["guidance"]) and pipe.seed == p["seed"]
                and pipe.t_index_list == strength_to_t_index_list(p["strength"], pipe.n))

    assert wait_until(landed, 3), (pipe.guidance_scale, pipe.seed, pipe.t_index_list)
    # faders follow: each changed value is echoed on its own address
    feedback.wait_for("/sd/guidance", lambda a: a[0] == pytest.approx(p["guidance"]))
    feedback.wait_for("/sd/prompt", lambda a: a[0] == p["prompt"])
    feedback.wait_for("/sd/strength", lambda a: a[0] == pytest.approx(p["strength"]))
    feedback.wait_for("/sd/status/preset", lambda a: a[0] == "ink-cut")


def test_recall_by_index_and_step(daemon, client):
    names = daemon.presets.names()
    send(client, "/sd/preset", 0)
    assert wait_until(lambda: daemon.controller.current_preset == names[0], 3)
    send(client, "/sd/preset/next")
    assert wait_until(lambda: daemon.controller.current_preset == names[1], 3)
    send(client, "/sd/preset/prev")
    send(client, "/sd/preset/prev")
    assert wait_until(lambda: daemon.controller.current_preset == names[-1], 3)


def test_cold_conflict_is_refused_and_changes_nothing(daemon, client, feedback):
    time.sleep(0.3)
    before = dict(daemon.controller.values)
    feedback.clear()
    send(client, "/sd/preset", "needs-rebuild")
    err = feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/preset")
    assert "steps" in err[1] and "rebuild" in err[1]
    assert daemon.controller.values == before


def test_unknown_preset_is_an_error(daemon, client, feedback):
    time.sleep(0.3)
    feedback.clear()
    send(client, "/sd/preset", "no-such-look")
    assert "no preset" in feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/preset")[1]
    send(client, "/sd/preset", 999)
    feedback.wait_for("/sd/error", lambda a: "999" in a[1])


def test_morph_moves_guidance_noise_and_embeddings_over_time(daemon, client, feedback, preset_dir):
    pipe = daemon.engine.pipeline
    start = {"prompt": "a quiet beach at dawn", "guidance": 1.0, "delta": 1.0, "strength": 0.2, "seed": 5,
             "smoothing": 0.0, "transition": 0}
    target = {"prompt": "a burning city at night", "guidance": 3.0, "delta": 0.5, "strength": 0.9, "seed": 6,
              "smoothing": 0.8, "transition": 1.5}
    (preset_dir / "m-start.yaml").write_text(yaml.safe_dump(start))
    (preset_dir / "m-target.yaml").write_text(yaml.safe_dump(target))
    assert wait_until(lambda: daemon.presets.get("m-target") is not None and daemon.presets.get("m-start"), 3)
    assert wait_until(lambda: "a burning city at night" in daemon.cache and "a quiet beach at dawn" in daemon.cache, 10)
    send(client, "/sd/preset", "m-start")
    assert wait_until(lambda: pipe.seed == 5 and pipe.guidance_scale == 1.0, 3)
    noise5 = pipe.noise.clone()
    feedback.clear()
    t0 = time.monotonic()
    send(client, "/sd/preset", "m-target")
    mids, smooth = [], []
    while time.monotonic() - t0 < 1.2:
        mids.append(pipe.guidance_scale)
        smooth.append(pipe.smoothing)
        time.sleep(0.05)
    inner = [g for g in mids if 1.05 < g < 2.95]
    assert inner, f"guidance jumped instead of morphing: {mids}"
    assert inner == sorted(inner)  # monotonic ramp
    assert [s for s in smooth if 0.02 < s < 0.78], f"smoothing jumped instead of morphing: {smooth}"
    assert wait_until(lambda: pipe.guidance_scale == 3.0 and pipe.smoothing == 0.8, 3)
    assert wait_until(lambda: pipe.seed == 6, 1)
    assert torch.equal(pipe.noise, pipe.noise_for_seed(6).to(pipe.noise.dtype))
    assert not torch.equal(pipe.noise, noise5)
    target = daemon.engine.encoder.encode("a burning city at night")
    assert wait_until(lambda: torch.allclose(pipe.prompt_embeds, target, atol=1e-6), 2)
    # the end of a morph is echoed
    feedback.wait_for("/sd/guidance", lambda a: a[0] == pytest.approx(3.0))
    feedback.wait_for("/sd/seed", lambda a: a[0] == 6)


def test_recall_morphs_the_seed_crossfader_and_ends_on_its_exact_noise(daemon, client, preset_dir):
    from stream_core.blend import slerp

    pipe = daemon.engine.pipeline
    base = {"prompt": "a quiet beach at dawn", "seed": 5, "seed_b": 9}
    (preset_dir / "s-start.yaml").write_text(yaml.safe_dump({**base, "seed_mix": 0.0, "transition": 0}))
    (preset_dir / "s-target.yaml").write_text(yaml.safe_dump({**base, "seed_mix": 0.7, "transition": 1.0}))
    assert wait_until(lambda: daemon.presets.get("s-target") is not None and daemon.presets.get("s-start"), 3)
    n5, n9 = pipe.noise_for_seed(5), pipe.noise_for_seed(9)
    send(client, "/sd/preset", "s-start")
    assert wait_until(lambda: torch.equal(pipe.noise, n5), 3)
    send(client, "/sd/preset", "s-target")
    target = slerp(n5.float(), n9.float(), 0.7).to(n5.dtype)
    seen_between = False
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.8:
        noise = pipe.noise.clone()
        seen_between |= not torch.equal(noise, n5) and not torch.allclose(noise, target, atol=1e-4)
        time.sleep(0.05)
    assert seen_between, "the noise cut instead of morphing"
    assert wait_until(lambda: torch.allclose(pipe.noise, target, atol=1e-6), 3)
    assert daemon.controller.values["seed_mix"] == 0.7


def test_save_then_recall_round_trip(daemon, client, preset_dir):
    send(client, "/sd/guidance", 2.75)
    send(client, "/sd/prompt", "a saved look")
    assert wait_until(lambda: daemon.controller.values["guidance"] == 2.75)
    send(client, "/sd/preset/save", "my_look-1")
    path = preset_dir / "my_look-1.yaml"
    assert wait_until(path.exists, 3)
    saved = yaml.safe_load(path.read_text())
    assert saved["guidance"] == 2.75 and saved["prompt"] == "a saved look"
    send(client, "/sd/guidance", 1.1)
    assert wait_until(lambda: daemon.presets.get("my_look-1") is not None, 3)
    send(client, "/sd/preset", "my_look-1")
    assert wait_until(lambda: daemon.engine.pipeline.guidance_scale == 2.75, 3)


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "x" * 65, "bad name", "evil\\x", "/abs"])
def test_save_rejects_bad_names_and_canary_survives(daemon, client, feedback, preset_dir, name):
    canary = preset_dir.parent / "canary.yaml"
    canary.write_text("keep me")
    before = sorted(os.listdir(preset_dir))
    time.sleep(0.25)
    feedback.clear()
    send(client, "/sd/preset/save", name)
    feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/preset/save")
    time.sleep(0.1)
    assert canary.read_text() == "keep me"
    assert sorted(os.listdir(preset_dir)) == before


def test_hot_reload_broken_file_keeps_previous_and_reports(daemon, client, feedback, preset_dir):
    path = preset_dir / "hot.yaml"
    path.write_text("prompt: first version\nguidance: 1.7\n")
    assert wait_until(lambda: daemon.presets.get("hot") is not None, 3)
    feedback.clear()
    tmp = preset_dir / ".hot.yaml.tmp"
    tmp.write_text("prompt: second\nguidanse: 2.0\n")  # misspelt key
    os.replace(tmp, path)  # editors save by rename
    err = feedback.wait_for("/sd/error", lambda a: "hot" in a[1], timeout=4)
    assert "guidanse" in err[1]
    assert daemon.presets.get("hot").guidance == 1.7
    path.write_text("prompt: third version\nguidance: 1.9\n")
    assert wait_until(lambda: daemon.presets.get("hot").guidance == 1.9, 3)
    path.unlink()
    assert wait_until(lambda: daemon.presets.get("hot") is None, 3)
