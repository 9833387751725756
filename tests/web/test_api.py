"""The control page's API without sockets: JSON -> OSC message -> the OSC table's validator ->
the same submit as the OSC receiver; the events the page lives on."""

from __future__ import annotations

import json

import pytest

from bridge import params as params_mod
from bridge.control.codec import encode_message
from bridge.control.inbox import Refusal
from bridge.control.surface import ControlSurface, RecallPreset, SavePreset, SetParams, StepPreset
from bridge.params import PARAMS, ParamSpec
from bridge.web.api import ControlApi, LiveEvents, param_table, parse_request


class Recorder:
    def __init__(self) -> None:
        self.batches: list = []
        self.errors: list[tuple[str, str]] = []
        self.refuse: Refusal | None = None

    def submit(self, batch):
        if self.refuse is not None:
            return self.refuse
        self.batches.append(batch)
        return None


def make_api(rec: Recorder, ranges=None, presets=("a", "b"), status=None) -> ControlApi:
    return ControlApi(ControlSurface(ranges), rec.submit, values=lambda: dict(params_mod.default_values()),
                      presets=lambda: list(presets), status=status or (lambda: {"preset": "a", "dropped": 0}),
                      on_error=lambda address, reason: rec.errors.append((address, reason)))


def post(api: ControlApi, data) -> tuple[int, dict]:
    return api.apply(json.dumps(data).encode())


def test_a_change_goes_to_submit_as_the_osc_receiver_would():
    rec = Recorder()
    api = make_api(rec)
    assert post(api, {"address": "/sd/strength", "args": [0.6]}) == (
        200, {"ok": True, "applied": True, "address": "/sd/strength"})
    assert rec.batches == [[SetParams({"strength": 0.6})]]
    assert api.counts == {"accepted": 1, "refused": 0, "busy": 0}
    # the same messages sent as OSC datagrams make the same batches
    cases = [("/sd/seed", [7]), ("/sd/seed", [7.0]), ("/sd/bypass", [True]), ("/sd/prompt", ["ink"]),
             ("/sd/norm/guidance", [0.5]), ("/sd/preset", ["ink-wash"]), ("/sd/preset", [3]),
             ("/sd/preset/next", []), ("/sd/preset/save", ["mine", 1]), ("/sd/state", [])]
    surface = ControlSurface()
    for address, args in cases:
        rec.batches.clear()
        assert post(api, {"address": address, "args": args})[0] == 200, address
        assert rec.batches == [surface.process(encode_message(address, *args))], address
    assert rec.errors == []


def test_commands_are_typed_like_osc():
    rec = Recorder()
    api = make_api(rec)
    post(api, {"address": "/sd/preset/save", "args": ["look"]})
    post(api, {"address": "/sd/preset/save", "args": ["look", 1]})
    post(api, {"address": "/sd/preset/prev", "args": []})
    post(api, {"address": "/sd/preset", "args": "glitch-chrome"})  # one argument need not be a list
    assert rec.batches == [[SavePreset("look", False)], [SavePreset("look", True)], [StepPreset(-1)],
                           [RecallPreset("glitch-chrome")]]


@pytest.mark.parametrize("message, reason", [
    ({"address": "/sd/guidance", "args": [25]}, "25.0 is outside 0..20"),
    ({"address": "/sd/seed", "args": [1.5]}, "expected an integer"),
    ({"address": "/sd/strength", "args": ["high"]}, "expected a number"),
    ({"address": "/sd/strength", "args": []}, "expected 1 argument"),
    ({"address": "/sd/stregth", "args": [0.5]}, "unknown address"),
    ({"address": "/sd/*", "args": [0.5]}, "patterns"),
    ({"address": "/sd/preset/save", "args": ["../etc"]}, "preset names are"),
    ({"address": "/sd/norm/guidance", "args": [1.5]}, "outside 0..1"),
])
def test_a_refused_value_says_why_changes_nothing_and_is_reported_like_osc(message, reason):
    rec = Recorder()
    api = make_api(rec)
    code, answer = post(api, message)
    assert code == 400 and answer["ok"] is False and reason in answer["reason"]
    assert answer["address"] == message["address"]
    assert rec.batches == [] and rec.errors == [(message["address"], answer["reason"])]


def test_several_changes_apply_together_or_not_at_all():
    rec = Recorder()
    api = make_api(rec)
    good = {"address": "/sd/strength", "args": [0.4]}
    assert post(api, {"messages": [good, {"address": "/sd/guidance", "args": [2]}]})[0] == 200
    assert rec.batches == [[SetParams({"strength": 0.4, "guidance": 2.0})]]
    code, answer = post(api, {"messages": [good, {"address": "/sd/guidance", "args": [-1]}]})
    assert code == 400 and answer["address"] == "/sd/guidance" and len(rec.batches) == 1


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (b'"/sd/strength"', "expected {"),
    (b'{"address": "/sd/strength", "args": [[1]]}', "arguments are numbers"),
    (b'{"address": "/sd/strength", "args": [1], "extra": 1}', "unknown key"),
    (b'{"messages": []}', "1 to 16 messages"),
    (b'{"address": "/sd/prompt", "args": ["a","b","c","d","e","f","g","h","i"]}', "at most 8"),
    (b'\xff\xfe', "not JSON"),
])
def test_malformed_requests_are_refused(body, reason):
    rec = Recorder()
    code, answer = make_api(rec).apply(body)
    assert code == 400 and reason in answer["reason"] and rec.batches == []


def test_non_finite_numbers_are_refused_by_the_validator():
    rec = Recorder()
    code, answer = make_api(rec).apply(b'{"address": "/sd/strength", "args": [NaN]}')
    assert code == 400 and "finite" in answer["reason"] and rec.batches == []


def test_a_full_command_queue_is_a_503_with_its_reason():
    rec = Recorder()
    rec.refuse = Refusal("/sd/preset", "control queue full (64 commands waiting); command refused")
    code, answer = post(make_api(rec), {"address": "/sd/preset", "args": ["a"]})
    assert code == 503 and "queue full" in answer["reason"]


def test_a_button_release_is_accepted_and_does_nothing():
    rec = Recorder()
    assert post(make_api(rec), {"address": "/sd/preset/next", "args": [0]}) == (200, {"ok": True, "applied": False})
    assert rec.batches == []


def test_json_types_become_osc_type_tags():
    msg = parse_request(b'{"address": "/x", "args": ["s", 1, 2.5, true, false, null, 4294967296]}')
    assert msg.typetags == "sidTFNh" and msg.args == ("s", 1, 2.5, True, False, None, 4294967296)


def test_the_table_has_every_parameter_with_its_control_range():
    table = {row["name"]: row for row in param_table(ControlSurface({"guidance": (1.0, 3.0)}))}
    assert set(table) == set(PARAMS)
    assert table["guidance"]["control"] == [1.0, 3.0]  # osc.ranges, like /sd/norm
    assert table["delta"]["control"] == [0.0, 2.0] and table["seed"]["kind"] == "int"
    assert "control" not in table["prompt"] and table["bypass"]["kind"] == "bool"
    assert table["strength"]["address"] == "/sd/strength"


def test_a_new_numeric_parameter_gets_a_fader_and_an_address_with_no_page_change(monkeypatch):
    spec = ParamSpec("tempo_bpm", "/sd/tempo/bpm", float, 120.0, 20.0, 300.0, doc="tempo", control=(60.0, 180.0))
    monkeypatch.setitem(PARAMS, spec.name, spec)
    rec = Recorder()
    api = make_api(rec)
    row = next(r for r in api.describe()["params"] if r["name"] == "tempo_bpm")
    assert row["control"] == [60.0, 180.0] and row["kind"] == "float"
    assert post(api, {"address": "/sd/tempo/bpm", "args": [128]})[0] == 200
    assert rec.batches == [[SetParams({"tempo_bpm": 128.0})]]
    assert post(api, {"address": "/sd/tempo/bpm", "args": [500]})[0] == 400


def test_the_configured_controlnets_knobs_get_faders_too():
    """The page's table is the surface's live table: per-ControlNet knobs (from the config) get a
    fader or a toggle like every parameter."""
    from bridge.params import live_params

    surface = ControlSurface(None, live_params(["none", "canny"]))
    table = {row["name"]: row for row in param_table(surface)}
    assert table["controlnet_0_scale"]["address"] == "/sd/controlnet/0/scale"
    assert table["controlnet_1_scale"]["control"] == [0.0, 2.0]
    assert table["controlnet_1_enabled"]["kind"] == "bool"
    assert "controlnet_1_canny_low" in table and "controlnet_0_canny_low" not in table


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def events_of(data: bytes) -> list[tuple[str, object]]:
    out = []
    for block in data.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_events_carry_changes_state_and_errors():
    sent: list[bytes] = []
    live = LiveEvents(make_api(Recorder()), sent.append)
    live.publish({"strength": 0.7, "bypass": True}, {"preset": "ink-wash"}, [("/sd/preset", "no preset 'x'")])
    assert events_of(sent[0]) == [("params", {"strength": 0.7, "bypass": True}), ("state", {"preset": "ink-wash"}),
                                  ("sd_error", {"address": "/sd/preset", "reason": "no preset 'x'"})]
    live.publish({}, {}, [])
    assert len(sent) == 1  # nothing to say, nothing sent


def test_the_first_event_is_the_whole_state():
    live = LiveEvents(make_api(Recorder()), lambda data: None)
    data = live.hello()
    assert data.startswith(b"retry: 2000\n\n")
    (name, hello), = events_of(data)
    assert name == "hello" and hello["presets"] == ["a", "b"] and hello["preset"] == "a"
    assert hello["values"]["strength"] == PARAMS["strength"].default and hello["history"] == []
    assert {p["name"] for p in hello["params"]} == set(PARAMS)


def test_plots_keep_60_seconds_and_drops_become_a_rate():
    clock = Clock()
    figures = {"fps": 30.0, "fps_processed": 12.5, "latency_ms": 80.0, "dropped": 0, "preset": ""}
    live = LiveEvents(make_api(Recorder(), status=lambda: dict(figures)), lambda data: None, clock=clock)
    for _ in range(130):  # 65 s at 2 samples a second, 2 drops a second
        live.sample()
        clock.t += 0.5
        figures["dropped"] += 1
    history = live.history()
    assert history[-1]["t"] - history[0]["t"] <= 60.0 and len(history) == 121
    assert history[-1]["drops_per_s"] == pytest.approx(2.0)
    assert history[-1]["fps_processed"] == 12.5 and history[0]["drops_per_s"] == pytest.approx(2.0)


def test_ticks_send_figures_and_preset_list_changes_only_when_they_change():
    names = ["a"]
    sent: list[bytes] = []
    api = ControlApi(ControlSurface(), Recorder().submit, values=dict, presets=lambda: list(names),
                     status=lambda: {"fps": 1.0, "dropped": 0})
    live = LiveEvents(api, sent.append)
    live.tick()
    assert [e for e, _ in events_of(sent[-1])] == ["status", "presets"]  # the first tick says where it starts
    live.tick()
    assert [e for e, _ in events_of(sent[-1])] == ["status"]
    names.append("b")
    live.hello()  # a new viewer's snapshot does not hide the change from the others
    live.tick()
    assert events_of(sent[-1])[1] == ("presets", {"presets": ["a", "b"]})
    live.tick()
    assert [e for e, _ in events_of(sent[-1])] == ["status"]
