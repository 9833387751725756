"""The bounded control inbox: coalescing, order across lanes, bundle atomicity, overflow, per-tick cap."""

from __future__ import annotations

import threading

import pytest

from bridge.control.inbox import MAX_COMMANDS_PER_BATCH, ControlInbox
from bridge.control.surface import (
    ControlSurface,
    DumpState,
    RecallPreset,
    SavePreset,
    SetParams,
    StepPreset,
)


def test_params_coalesce_latest_wins() -> None:
    inbox = ControlInbox()
    for i in range(2000):
        assert inbox.put([SetParams({"strength": i / 2000})]) is None
        inbox.put([SetParams({f"p{i % 20}": i})])
    out = inbox.drain()
    assert len(out) == 1 and isinstance(out[0], SetParams)
    values = out[0].values
    assert values["strength"] == 1999 / 2000
    assert len(values) == 21  # one slot per parameter, whatever the message count
    assert all(values[f"p{k}"] == 1980 + k for k in range(20))
    assert inbox.drain() == []
    assert inbox.stats()["coalesced"] == 4000 - 21


def test_order_is_kept_across_params_and_commands() -> None:
    inbox = ControlInbox()
    inbox.put([SetParams({"strength": 0.1, "guidance": 1.0})])
    inbox.put([SetParams({"strength": 0.2})])
    inbox.put([RecallPreset("ink")])
    inbox.put([SetParams({"strength": 0.3})])
    inbox.put([StepPreset(1), SetParams({"delta": 0.5}), SavePreset("x", True)])
    inbox.put([SetParams({"guidance": 2.0})])
    assert inbox.drain() == [
        SetParams({"guidance": 1.0, "strength": 0.2}),
        RecallPreset("ink"),
        SetParams({"strength": 0.3}),
        StepPreset(1),
        SetParams({"delta": 0.5}),
        SavePreset("x", True),
        SetParams({"guidance": 2.0}),
    ]


def test_per_tick_cap_and_later_values_wait_for_the_commands_before_them() -> None:
    inbox = ControlInbox(max_entries=64, max_per_tick=8)
    for i in range(20):
        inbox.put([RecallPreset(i)])
    inbox.put([SetParams({"strength": 0.9})])
    first, second, third = inbox.drain(), inbox.drain(), inbox.drain()
    assert first == [RecallPreset(i) for i in range(8)]
    assert second == [RecallPreset(i) for i in range(8, 16)]
    # the value sent after the recalls is applied after them, never before
    assert third == [RecallPreset(i) for i in range(16, 20)] + [SetParams({"strength": 0.9})]
    assert inbox.drain() == []


def test_queue_full_refuses_with_one_error_per_burst(caplog) -> None:
    errors: list[tuple[str, str]] = []
    inbox = ControlInbox(max_entries=4, max_per_tick=2, on_refused=lambda a, r: errors.append((a, r)))
    with caplog.at_level("WARNING", logger="bridge.control.inbox"):
        results = [inbox.put([RecallPreset(i)]) for i in range(10)]
    assert results[:4] == [None] * 4
    assert all(r is not None and "queue full" in r.reason for r in results[4:])
    assert errors == [("/sd/preset", results[4].reason)]  # one reply for the burst of six
    assert inbox.stats()["refused"] == 6
    # parameters are never refused: they coalesce
    assert inbox.put([SetParams({"strength": 0.5})]) is None
    # a refused bundle changes nothing, its parameter values included
    assert inbox.put([SetParams({"guidance": 9.0}), SavePreset("late")]) is not None
    inbox.drain()
    with caplog.at_level("WARNING", logger="bridge.control.inbox"):
        assert inbox.put([StepPreset(-1)]) is None  # room again: the burst is over...
    # ...and its refusals are logged once, with their count (the refused bundle included)
    assert [r.getMessage() for r in caplog.records] == [
        "control queue was full: 7 command(s) refused (each burst got one /sd/error)"]
    for _ in range(5):
        inbox.put([DumpState()])
    assert len(errors) == 2 and errors[1][0] == "/sd/state"
    drained = inbox.drain_all()
    assert SavePreset("late") not in drained
    assert all(not (isinstance(c, SetParams) and "guidance" in c.values) for c in drained)
    assert inbox.stats()["overflow_bursts"] == 2


def test_too_many_commands_in_one_packet_are_refused_whole() -> None:
    errors: list[tuple[str, str]] = []
    inbox = ControlInbox(on_refused=lambda a, r: errors.append((a, r)))
    batch = [SetParams({"strength": 0.4})] + [RecallPreset(i) for i in range(MAX_COMMANDS_PER_BATCH + 1)]
    assert inbox.put(batch) is not None
    assert inbox.drain() == [] and len(errors) == 1 and "at most" in errors[0][1]


def test_bundle_is_never_split_between_ticks_under_concurrency() -> None:
    """A producer thread puts bundles that set guidance and delta to the same number (some with
    a command in them) while the render side drains and applies: after every tick, the applied
    values agree. Splitting a bundle across ticks would show a pair that differs."""
    inbox = ControlInbox(max_entries=1000, max_per_tick=3)
    n = 20000
    done = threading.Event()

    def produce() -> None:
        for i in range(1, n + 1):
            batch: list = [SetParams({"guidance": float(i)}), SetParams({"delta": float(i)})]
            if i % 7 == 0:
                batch = [SetParams({"guidance": float(i)}), DumpState(), SetParams({"delta": float(i)})]
            while inbox.put(batch) is not None:  # queue full: retry, as a client would
                pass
        done.set()

    values = {"guidance": 0.0, "delta": 0.0}
    thread = threading.Thread(target=produce)
    thread.start()
    ticks = 0
    while not (done.is_set() and inbox.pending() == (0, 0)):
        for cmd in inbox.drain():
            if isinstance(cmd, SetParams):
                values.update(cmd.values)
        ticks += 1
        assert values["guidance"] == values["delta"], (ticks, values)
    thread.join()
    assert values == {"guidance": float(n), "delta": float(n)}  # the last value that arrived wins


def test_bundle_from_the_wire_becomes_one_entry() -> None:
    from bridge.control.codec import encode_bundle, encode_message

    surface = ControlSurface()
    data = encode_bundle([encode_message("/sd/strength", 0.3), encode_message("/sd/preset", "ink"),
                          encode_message("/sd/guidance", 2.0)], 1)
    batch = surface.process(data)
    assert isinstance(batch, list)
    inbox = ControlInbox()
    inbox.put([SetParams({"guidance": 1.0})])
    inbox.put(batch)
    assert inbox.drain() == [SetParams({"guidance": 1.0}), SetParams({"strength": 0.3}), RecallPreset("ink"),
                             SetParams({"guidance": 2.0})]


@pytest.mark.parametrize("args,expected", [
    (["look"], SavePreset("look", False)),
    (["look", 1], SavePreset("look", True)),
    (["look", 0], SavePreset("look", False)),
    (["look", True], SavePreset("look", True)),
    (["look", 1.0], SavePreset("look", True)),
])
def test_save_takes_an_overwrite_flag(args, expected) -> None:
    from bridge.control.codec import encode_message

    assert ControlSurface().process(encode_message("/sd/preset/save", *args)) == [expected]


@pytest.mark.parametrize("args", [["look", 2], ["look", "yes"], ["look", 1, 1], []])
def test_save_refuses_a_bad_overwrite_flag(args) -> None:
    from bridge.control.codec import encode_message
    from bridge.control.surface import Rejected

    result = ControlSurface().process(encode_message("/sd/preset/save", *args))
    assert isinstance(result, Rejected) and result.address == "/sd/preset/save"
