"""Live state: turns accepted control commands into pipeline changes, on the render thread.

Other threads (OSC receiver, prompt encoder, preset watcher) only *submit* to an inbox; the render
loop calls :meth:`LiveController.tick` once before each frame, which drains the inbox, applies
every change (so an accepted parameter takes effect on the next frame the loop starts), advances a
running morph and reports what changed. Nothing here blocks: prompt texts are encoded by the
prompt cache's own thread, and preset saves are written by a :class:`bridge.presets.PresetSaver`.

Control batches go through a :class:`bridge.control.inbox.ControlInbox`: parameter changes
coalesce per parameter (latest wins), discrete commands wait in a bounded queue, and one tick
applies at most ``max_per_tick`` of them, so no flood of messages can hold up a frame.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.control.inbox import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_PER_TICK, ControlInbox, Refusal
from bridge.control.surface import (
    Command,
    DumpState,
    RecallPreset,
    SavePreset,
    SetParams,
    StepPreset,
    TempoTap,
    lfo_key,
    parse_lfo_key,
)
from bridge.lfo import Lfo, seed_for
from bridge.params import PARAMS, ParamSpec, default_values
from bridge.presets import (
    DEFAULT_MAX_PRESETS,
    ColdSettings,
    LfoSettings,
    Preset,
    PresetSaver,
    PresetStore,
)
from bridge.prompt_cache import PromptCache
from bridge.runtime.throttle import LogThrottle
from bridge.tempo import InternalClock, TapTempo, TempoClock, bar_phase, next_boundary
from stream_core.pipeline import MAX_SMOOTHING, StreamPipeline
from stream_core.temporal import MAX_LATENT_FEEDBACK

log = logging.getLogger("streambridge.live")

PROMPT_KEYS = ("prompt", "negative_prompt", "prompt_a", "prompt_b")
MORPH_FLOATS = ("guidance", "delta", "strength", "prompt_mix", "smoothing", "temporal_injection", "latent_feedback")
# temporal settings the pipeline applies (it refuses them when it has no bank; see _set_temporal)
TEMPORAL_KEYS = ("temporal_cache", "temporal_frames", "temporal_interval", "temporal_injection", "latent_feedback")
NOISE_KEYS = ("seed", "seed_b", "seed_mix")  # together they make the stream's noise
FAILURE_LOG_INTERVAL_S = 5.0
BEAT_EPS = 1e-9  # beats: a tick this close before a boundary is on it (float rounding of the clock)
BPM_FOLLOW_STEP = 0.005  # an external (Link) tempo change smaller than this is not echoed


@dataclass
class _Scheduled:
    """A quantised recall waiting for its beat: starts at the first tick at or after ``beat``."""

    beat: float
    name: str
    preset: Preset
    origin: str
    mode: str


@dataclass
class _Morph:
    """A running transition: float knobs move here, noise and conditioning in the pipeline
    (``StreamPipeline.begin_morph``/``advance_morph``), all driven by the same progress."""

    t0: float
    duration: float
    preset: str
    origin: str  # the address that asked for it (errors are reported there)
    start: dict[str, Any]  # float params at the start
    target: dict[str, Any]  # float params at the end
    target_noise: dict[str, Any] | None  # seed, seed_b, seed_mix the noise morph ends on
    target_texts: dict[str, str]  # the prompt fields the morph ends on
    conditioning: bool  # the embeddings morph (False once the user takes a prompt field over)

    @property
    def noise(self) -> bool:
        return self.target_noise is not None


class LiveController:
    """Owns the live parameter values and the pipeline's conditioning.

    ``feedback(changed)`` is called with every applied change (dict name -> value), ``error(address,
    reason)`` with every refused command, ``status(key, value)`` for preset/warm-up status. All three
    must be non-blocking (they enqueue).
    """

    def __init__(
        self,
        pipeline: StreamPipeline,
        cache: PromptCache,
        presets: PresetStore | None,
        cold: ColdSettings,
        *,
        initial: dict[str, Any] | None = None,
        feedback: Callable[[dict[str, Any]], None] = lambda changed: None,
        error: Callable[[str, str], None] = lambda address, reason: None,
        status: Callable[[str, Any], None] = lambda key, value: None,
        clock: Callable[[], float] = time.monotonic,
        max_queued: int = DEFAULT_MAX_ENTRIES,
        max_per_tick: int = DEFAULT_MAX_PER_TICK,
        max_presets: int = DEFAULT_MAX_PRESETS,
        tempo: TempoClock | None = None,
        quantize: str = "off",
        control_ranges: Mapping[str, tuple[float, float]] | None = None,
        params: Mapping[str, ParamSpec] | None = None,
        on_canny: Callable[[int, float, float], None] = lambda index, low, high: None,
    ) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.presets = presets
        self.cold = cold
        self._feedback = feedback
        self._error = error
        self._status = status
        self._clock = clock
        # OSC batches: coalesced params + a bounded command queue; internal events (prompt
        # encoded, presets reloaded) are rare and go through their own small queue
        self.inbox = ControlInbox(max_queued, max_per_tick, on_refused=self._error)
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.values: dict[str, Any] = default_values()
        # the ControlNets' parameters (controlnet_<i>_scale, ...): they depend on the config
        self.params: Mapping[str, ParamSpec] = PARAMS if params is None else params
        self._cn_count = len({n.split("_")[1] for n in self.params if n.startswith("controlnet_")})
        for name, spec in self.params.items():
            self.values.setdefault(name, spec.default)
        if initial:
            self.values.update(initial)
        self.values.update(temporal_values(pipeline))
        self._morph_floats: tuple[str, ...] = MORPH_FLOATS + tuple(
            f"controlnet_{i}_scale" for i in range(self._cn_count))
        # per ControlNet: the scale the controller drives (a morph moves it), the loss factor the
        # render loop reports (bridge.controlnet) and what the pipeline was last given
        self._cn_scale = [float(self.values[f"controlnet_{i}_scale"]) for i in range(self._cn_count)]
        self._cn_gain = [1.0] * self._cn_count
        self._cn_applied: list[tuple[float, bool] | None] = [None] * self._cn_count
        self._on_canny = on_canny
        self.current_preset: str | None = None
        self._morph: _Morph | None = None
        self._pending_recall: tuple[str, Preset, str] | None = None
        self._conditioning_dirty = True
        self.saver = (
            PresetSaver(presets, max_count=max_presets, on_error=self._error) if presets is not None else None
        )
        self._closed = False
        self.applied_batches = 0
        self._failure_log = LogThrottle(FAILURE_LOG_INTERVAL_S, clock)  # control failures: one line per few s
        # noise follows seed/seed_b/seed_mix once per tick (a fader may send several per frame)
        self._noise_dirty = self.values["seed_mix"] > 0
        # tempo: the beat clock (internal unless the daemon hands in Link), tap tempo, quantised
        # recalls, LFOs. LFO values live in `modulated`, never in `values` (the faders)
        self.tempo: TempoClock = tempo if tempo is not None else InternalClock(
            float(self.values["bpm"]), clock=clock)
        self.values["bpm"] = round(float(self.tempo.bpm), 2)
        if quantize not in ("off", "beat", "bar"):
            raise ValueError(f"quantize should be off, beat or bar, got {quantize!r}")
        self.quantize = quantize
        self.control_ranges = dict(control_ranges or {})
        self._taps = TapTempo()
        self._scheduled: _Scheduled | None = None
        self.lfos: dict[str, Lfo] = {}
        self.modulated: dict[str, float] = {}  # parameter -> the value the pipeline gets now (LFOs)
        self.effective: dict[str, Any] = self.values  # values with `modulated` on top (render loop: mix)
        self._morph_now: dict[str, float] = {}  # the running morph's current float values
        self._t_origin = clock()  # free-running (Hz) LFOs count seconds from here
        self._now = self._t_origin
        self._last_beat: int | None = None
        for i in range(self._cn_count):
            self._apply_controlnet(i)

    # ------------------------------------------------------------------ ControlNets
    def set_controlnet_gains(self, gains: list[float]) -> None:
        """The loss factors of the ControlNets (render thread; see :class:`bridge.controlnet.
        ControlNetFeed`): each scale the pipeline gets is the live scale times its factor."""
        for i, g in enumerate(gains[: self._cn_count]):
            if g != self._cn_gain[i]:
                self._cn_gain[i] = float(g)
                self._apply_controlnet(i)

    def _apply_controlnet(self, i: int) -> None:
        """Give the pipeline ControlNet ``i``'s effective scale and switch, when they changed."""
        scale = self._cn_scale[i] * self._cn_gain[i]
        scale = scale if scale > 0.0 else 0.0
        enabled = bool(self.values[f"controlnet_{i}_enabled"])
        want = (scale, enabled)
        if self._cn_applied[i] == want:
            return
        self.pipeline.set_controlnet(i, scale=scale, enabled=enabled)
        self._cn_applied[i] = want

    @staticmethod
    def _controlnet_knob(name: str) -> tuple[int, str] | None:
        if not name.startswith("controlnet_"):
            return None
        _, index, knob = name.split("_", 2)
        return int(index), knob

    def snapshot(self) -> dict[str, Any]:
        """A copy of the live values, safe to take from another thread (the copy is one C call
        under the GIL; the render thread only ever assigns existing keys)."""
        return dict(self.values)

    # ------------------------------------------------------------------ thread-safe submission
    def submit(self, batch: list[Command]) -> Refusal | None:
        """Queue one validated batch (applied whole, on the next tick that reaches it). Never
        blocks; a refused batch (command queue full) changes nothing and is reported. A tap is
        stamped here, on receipt, so the frame rate adds no jitter to tap tempo."""
        if any(type(c) is TempoTap and c.at is None for c in batch):
            at = self._clock()
            batch = [TempoTap(at, c.downbeat) if type(c) is TempoTap and c.at is None else c for c in batch]
        return self.inbox.put(batch)

    def notify_presets_changed(self, changed: dict[str, Preset], removed: list[str], errors: dict[str, str]) -> None:
        self._events.put(("presets", (changed, removed, errors)))

    def _embedding_ready(self, text: str, value: Any) -> None:
        self._events.put(("embed", text))

    # ------------------------------------------------------------------ render-thread side
    def tick(self, now: float | None = None) -> None:
        """Apply everything queued, advance the morph. Call once per frame on the render thread."""
        now = self._clock() if now is None else now
        self._now = now
        while True:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                break
            try:
                if kind == "embed":
                    self._conditioning_dirty = True
                elif kind == "presets":
                    self._presets_changed(*payload)
            except Exception as exc:  # a bug must not kill the render loop; report it
                log.exception("control event failed")
                self._error("/sd", f"internal error: {exc}")
        self._follow_tempo()
        commands = self.inbox.drain()  # capped: <= max_per_tick commands + one entry per parameter
        if commands:
            self._apply_batch(commands, now)
        if self._scheduled is not None:
            self._fire_scheduled(now)
        if self._pending_recall is not None:
            name, preset, origin = self._pending_recall
            if all(self.cache.get(t) is not None for t in self._texts_for(preset)):
                self._pending_recall = None
                self._start_recall(name, preset, now, origin)
        if self._morph is not None:
            self._advance_morph(now)
        if self.lfos or self.modulated:
            self._apply_lfos(now)
        if self._conditioning_dirty and (self._morph is None or not self._morph.conditioning):
            self._update_conditioning()
        if self._noise_dirty and (self._morph is None or not self._morph.noise):
            self._update_noise()
        self._beat_report(now)

    # ------------------------------------------------------------------ commands
    def _apply_batch(self, batch: list[Command], now: float) -> None:
        self.applied_batches += 1
        for cmd in batch:
            try:
                self._apply_command(cmd, now)
            except Exception as exc:  # a bug must not kill the render loop; report it
                log.exception("control command failed")
                self._error("/sd", f"internal error: {exc}")

    def _apply_command(self, cmd: Command, now: float) -> None:
        if isinstance(cmd, SetParams):
            self._set_params(cmd.values)
        elif isinstance(cmd, RecallPreset):
            self._recall(cmd.ref, now, quantize=cmd.quantize)
        elif isinstance(cmd, StepPreset):
            if self.presets is None or not self.presets.names():
                self._error("/sd/preset/next" if cmd.delta > 0 else "/sd/preset/prev", "no presets loaded")
                return
            # a recall still waiting for its beat counts as the current one: next, next = two steps
            base = self._scheduled.name if self._scheduled is not None else self.current_preset
            name = self.presets.step(base, cmd.delta)
            if name is not None:
                self._recall(name, now)
        elif isinstance(cmd, TempoTap):
            at = cmd.at if cmd.at is not None else now
            if cmd.downbeat:
                self._downbeat(at)
            else:
                self._tap(at)
        elif isinstance(cmd, SavePreset):
            self._save(cmd.name, cmd.overwrite)
        elif isinstance(cmd, DumpState):
            self._feedback(dict(self.values))
            self._feedback({lfo_key(p, k): v for p, lfo in self.lfos.items() for k, v in lfo.fields().items()})
            self._status("preset", self.current_preset or "")

    def _set_params(self, values: dict[str, Any]) -> None:
        changed: dict[str, Any] = {}
        for name, value in values.items():
            lfo = parse_lfo_key(name)
            if lfo is not None:
                if self._set_lfo_field(*lfo, value):
                    changed[name] = value
                continue
            if self._morph is not None:
                self._morph_drop(name)
            if self.values.get(name) == value:
                continue
            if name in TEMPORAL_KEYS and not self._set_temporal(name, value):
                continue
            self.values[name] = value
            changed[name] = value
            if name in PROMPT_KEYS:
                self._conditioning_dirty = True
                if value or name in ("prompt", "negative_prompt"):
                    self.cache.request_debounced(name, value, on_ready=self._embedding_ready)
            elif name == "prompt_mix":
                self._conditioning_dirty = True
            elif name == "strength":
                self.pipeline.set_strength(value)
            elif name == "guidance":
                self.pipeline.set_guidance_scale(value)
            elif name == "delta":
                self.pipeline.set_delta(value)
            elif name in NOISE_KEYS:
                self._noise_dirty = True
            elif name == "filter_threshold":
                self.pipeline.set_filter(value)
            elif name == "smoothing":
                self.pipeline.set_smoothing(value)
            elif name == "bpm":
                self.tempo.set_bpm(value, self._now)
            elif (knob := self._controlnet_knob(name)) is not None:
                i, what = knob
                if what == "scale":
                    self._cn_scale[i] = float(value)
                    self._apply_controlnet(i)
                elif what == "enabled":
                    self._apply_controlnet(i)
                else:  # canny thresholds: the workers making edge images read them
                    self._on_canny(i, float(self.values[f"controlnet_{i}_canny_low"]),
                                   float(self.values[f"controlnet_{i}_canny_high"]))
            # bypass, mix, transition(_beats) are read by the render loop / recalls
        if changed:
            self._feedback(changed)

    def _set_temporal(self, name: str, value: Any) -> bool:
        """Apply one temporal setting; False (reported to the sender, nothing changed) when the
        pipeline refuses it (no bank built, more frames than the bank holds)."""
        setter = {
            "temporal_cache": self.pipeline.set_temporal_cache,
            "temporal_frames": self.pipeline.set_temporal_frames,
            "temporal_interval": self.pipeline.set_temporal_interval,
            "temporal_injection": self.pipeline.set_temporal_injection,
            "latent_feedback": self.pipeline.set_latent_feedback,
        }[name]
        try:
            setter(value)
        except ValueError as exc:  # RebuildRequired is a ValueError
            self._error(PARAMS[name].address, str(exc))
            return False
        return True

    def _texts_for(self, preset: Preset) -> list[str]:
        return [t for t in preset.prompt_texts() if t]

    def _resolve(self, ref: str | int) -> tuple[str, Preset] | None:
        if self.presets is None:
            return None
        if isinstance(ref, int):
            return self.presets.by_index(ref)
        p = self.presets.get(ref)
        return (ref, p) if p is not None else None

    def _recall(self, ref: str | int, now: float, origin: str = "/sd/preset", quantize: str | None = None) -> None:
        found = self._resolve(ref)
        if found is None:
            count = len(self.presets.names()) if self.presets else 0
            self._error(origin, f"no preset {ref!r} ({count} loaded)")
            return
        name, preset = found
        conflicts = preset.cold_conflicts(self.cold)
        if conflicts:
            self._error(origin, f"preset {name!r} needs a rebuild, refused mid-show: " + "; ".join(conflicts))
            return
        mode = self.quantize if quantize is None else quantize
        self._scheduled = None  # the latest recall wins, whether it waits for a beat or not
        if mode in ("beat", "bar"):
            unit = 1.0 if mode == "beat" else float(self.tempo.beats_per_bar)
            beat = self.tempo.beat_at(now)
            at = next_boundary(beat, unit)
            if at > beat:
                for t in self._texts_for(preset):  # encode meanwhile if needed (normally pre-warmed)
                    self.cache.request(t, self._embedding_ready)
                self._scheduled = _Scheduled(at, name, preset, origin, mode)
                log.info("preset %s: recall on the next %s (beat %g, now %.3f)", name, mode, at, beat)
                return
        self._recall_now(name, preset, now, origin)

    def _fire_scheduled(self, now: float) -> None:
        """Start the waiting quantised recall at the first tick at or after its boundary; a morph
        counts from the boundary itself, so it stays on the grid whatever the frame rate."""
        s = self._scheduled
        assert s is not None
        beat = self.tempo.beat_at(now)
        if beat < s.beat - BEAT_EPS:
            return
        self._scheduled = None
        late = (beat - s.beat) * 60.0 / self.tempo.bpm
        self._recall_now(s.name, s.preset, now - late, s.origin)

    def _recall_now(self, name: str, preset: Preset, now: float, origin: str) -> None:
        missing = [t for t in self._texts_for(preset) if self.cache.request(t, self._embedding_ready) is None]
        if missing:
            # pre-warm normally makes this impossible; wait for the encoder without stalling
            log.info("preset %s: %d prompt(s) still encoding; recall applies when ready", name, len(missing))
            self._pending_recall = (name, preset, origin)
            return
        self._start_recall(name, preset, now, origin)

    def _start_recall(self, name: str, preset: Preset, now: float, origin: str) -> None:
        try:
            self._start_recall_unguarded(name, preset, now, origin)
        except Exception as exc:  # refused by the pipeline, or a bug: end it, report once
            self._control_failed(origin, f"preset {name!r} recall failed: {exc}", exc)

    def _start_recall_unguarded(self, name: str, preset: Preset, now: float, origin: str) -> None:
        hot = preset.hot_values()
        hot.update(preset.controlnet_values())
        target = dict(self.values)
        target.update(hot)
        duration = self._transition_seconds(hot)
        if preset.lfos is not None:
            self._replace_lfos({p: s.to_lfo(p) for p, s in preset.lfos.items()})
        if duration <= 0:
            self.current_preset = name
            self._status("preset", name)
            self._end_morph()
            changed = {k: v for k, v in target.items() if self.values.get(k) != v}
            self._set_params(changed)
            self._update_conditioning()
            log.info("preset %s recalled (cut)", name)
            return
        # morph: float knobs, embeddings and noise move frame by frame; the rest cuts now. The
        # pipeline makes both ends of the noise and embeddings first (it refuses before anything
        # changes); the controller only passes seeds, mixes and the cache's embedding handles.
        noise_changes = any(target[k] != self.values[k] for k in NOISE_KEYS)
        conditioning = self._conditioning_for(target)
        self._end_morph()
        self.pipeline.begin_morph(
            seeds=(int(target["seed"]), int(target["seed_b"]), float(target["seed_mix"])) if noise_changes else None,
            conditioning=conditioning,
        )
        self.current_preset = name
        self._status("preset", name)
        cut = {k: v for k, v in target.items()
               if k not in self._morph_floats and k not in PROMPT_KEYS and k not in NOISE_KEYS}
        self._set_params({k: v for k, v in cut.items() if self.values.get(k) != v})
        self._morph = _Morph(
            t0=now, duration=duration, preset=name, origin=origin,
            start={k: float(self.values[k]) for k in self._morph_floats},
            target={k: float(target[k]) for k in self._morph_floats},
            target_noise={k: target[k] for k in NOISE_KEYS} if noise_changes else None,
            target_texts={k: target[k] for k in PROMPT_KEYS},
            conditioning=conditioning is not None,
        )
        log.info("preset %s: morphing over %.2f s", name, duration)

    def _transition_seconds(self, hot: dict[str, Any]) -> float:
        """The morph length of a recall: the preset's own transition_beats (> 0) or transition,
        else the live transition_beats (> 0) or transition. Beats count at the current tempo."""
        for source in (hot, self.values):
            beats = source.get("transition_beats")
            if beats:
                return float(beats) * 60.0 / self.tempo.bpm
            if source.get("transition") is not None and source is hot:
                return float(source["transition"])
        return float(self.values["transition"])

    def _end_morph(self) -> None:
        self._morph = None
        self._morph_now = {}
        self.pipeline.end_morph()

    def _control_failed(self, address: str, reason: str, exc: BaseException, end_morph: bool = True) -> None:
        """A control step failed: end the morph it belongs to (so it is not retried every frame),
        report it once to the sender, log one line (at most every few seconds; the traceback only
        at DEBUG)."""
        if end_morph:
            try:
                self._end_morph()
                self._resync()
            except Exception:  # never let the clean-up hide the report
                log.debug("ending the morph failed", exc_info=True)
        self._error(address, reason)
        suppressed = self._failure_log.hit()
        if suppressed is not None:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.error("%s: %s%s", address, reason, more)
            log.debug("control failure", exc_info=exc)

    def _resync(self) -> None:
        """After a transition was cut short: put the pipeline back on the live values (what the
        feedback last reported); noise and conditioning follow on this tick."""
        self._noise_dirty = self._conditioning_dirty = True
        for k in self._morph_floats:
            try:
                self._apply_float(k, float(self.values[k]))
            except Exception:
                log.debug("cannot restore %s", k, exc_info=True)

    def _morph_drop(self, name: str) -> None:
        m = self._morph
        if m is None:
            return
        if name in m.target:
            m.start.pop(name, None)
            m.target.pop(name, None)
        elif name in PROMPT_KEYS:
            m.conditioning = False
            self.pipeline.drop_morph_conditioning()
        elif name in NOISE_KEYS:
            m.target_noise = None
            self.pipeline.drop_morph_noise()

    def _advance_morph(self, now: float) -> None:
        m = self._morph
        assert m is not None
        try:
            u = min(1.0, max(0.0, (now - m.t0) / m.duration))
            self._morph_now = {}
            for k in m.target:
                v = m.start[k] + (m.target[k] - m.start[k]) * u
                self._morph_now[k] = v
                self._apply_float(k, v)
            self.pipeline.advance_morph(u)
            if u >= 1.0:
                self._finish_morph()
        except Exception as exc:  # ends the morph: one report, never a failure per frame
            self._control_failed(m.origin, f"preset {m.preset!r} transition failed: {exc}", exc)

    def _apply_float(self, name: str, v: float) -> None:
        if name == "strength":
            self.pipeline.set_strength(min(1.0, max(0.0, v)))
        elif name == "guidance":
            self.pipeline.set_guidance_scale(v)
        elif name == "delta":
            self.pipeline.set_delta(v)
        elif name == "smoothing":
            self.pipeline.set_smoothing(min(MAX_SMOOTHING, max(0.0, v)))
        elif name == "latent_feedback":
            self.pipeline.set_latent_feedback(min(MAX_LATENT_FEEDBACK, max(0.0, v)))
        elif name == "temporal_injection" and getattr(self.pipeline, "temporal", None) is not None:
            self.pipeline.set_temporal_injection(min(1.0, max(0.0, v)))
        elif name.startswith("controlnet_"):  # a ControlNet's scale
            i = int(name.split("_")[1])
            self._cn_scale[i] = min(2.0, max(0.0, v))
            self._apply_controlnet(i)
        # prompt_mix is folded into the embeddings' morph

    def _finish_morph(self) -> None:
        m = self._morph
        assert m is not None
        self._end_morph()
        final: dict[str, Any] = {k: m.target[k] for k in m.target}
        if m.conditioning:
            final.update(m.target_texts)
        if m.target_noise is not None:
            final.update(m.target_noise)
        changed = {k: v for k, v in final.items() if self.values.get(k) != v}
        self._set_params(changed)  # noise keys changed: the tick then sets the target's exact noise
        self._update_conditioning()
        log.info("preset %s: morph done", m.preset)

    # ------------------------------------------------------------------ noise
    def _update_noise(self) -> None:
        """seed, seed B and the seed crossfader -> the stream noise (made by the pipeline)."""
        self._noise_dirty = False
        v = self.values
        try:
            mix = self.modulated.get("seed_mix", v["seed_mix"])
            self.pipeline.set_seed_mix(int(v["seed"]), int(v["seed_b"]), float(mix))
        except Exception as exc:
            self._control_failed("/sd/seed", f"cannot set the noise: {exc}", exc, end_morph=False)

    # ------------------------------------------------------------------ conditioning
    def _conditioning_for(self, v: dict[str, Any]) -> tuple[Any, Any, float, Any] | None:
        """The cached embedding handles for the prompt fields in ``v``: (prompt A, prompt B or
        None, prompt mix, negative or None); None while prompt A or B is not encoded yet."""
        a = self.cache.get(v["prompt_a"] or v["prompt"])
        if a is None:
            return None
        b = None
        if v["prompt_b"]:
            b = self.cache.get(v["prompt_b"])
            if b is None:
                return None
        return a, b, float(v["prompt_mix"]), self.cache.get(v["negative_prompt"])

    def _update_conditioning(self) -> None:
        """Apply the embeddings for the current texts if they are all encoded; else keep the old
        ones (the encoder thread will wake us when it is done)."""
        values = self.values
        if "prompt_mix" in self.modulated:
            values = {**values, "prompt_mix": self.modulated["prompt_mix"]}
        handles = self._conditioning_for(values)
        if handles is None:
            return
        needs_neg = self.pipeline.cfg_type in ("full", "initialize")
        if handles[3] is None and needs_neg:
            return
        self._conditioning_dirty = False
        try:
            self.pipeline.set_conditioning(*handles)
        except Exception as exc:
            self._control_failed("/sd/prompt", f"cannot use the prompt: {exc}", exc, end_morph=False)

    # ------------------------------------------------------------------ presets
    def _presets_changed(self, changed: dict[str, Preset], removed: list[str], errors: dict[str, str]) -> None:
        for name, reason in errors.items():
            self._error("/sd/preset", f"preset file {name}: {reason}")
        if self.presets is None:
            return
        texts: list[str] = []
        for _, p in self.presets.items():
            texts += self._texts_for(p)
        self.cache.set_pinned(texts)
        fresh = [t for name, p in changed.items() for t in self._texts_for(p)]
        if fresh:
            self.prewarm(fresh)
        if changed or removed:
            log.info("presets reloaded: %d changed, %d removed", len(changed), len(removed))

    def prewarm(self, texts: list[str] | None = None) -> Any:
        """Encode every preset's prompts ahead of use (on the encoder thread)."""
        if texts is None:
            texts = []
            if self.presets is not None:
                for _, p in self.presets.items():
                    texts += self._texts_for(p)
        texts = list(dict.fromkeys(texts))

        def progress(done: int, total: int) -> None:
            if done == total or done % 4 == 0:
                log.info("pre-warming preset prompts: %d/%d", done, total)
            self._status("preset", f"warming {done}/{total}" if done < total else (self.current_preset or "ready"))

        return self.cache.prewarm(texts, pin=True, on_progress=progress)

    def _save(self, name: str, overwrite: bool = False, values: dict[str, Any] | None = None) -> None:
        """Capture the live state (no disk access here) and hand it to the saver thread."""
        if self.saver is None:
            self._error("/sd/preset/save", "no preset folder configured")
            return
        hot = {k: v for k, v in (self.values if values is None else values).items() if k not in ("bypass",)}
        data = {k: v for k, v in hot.items() if k in Preset.model_fields}
        if getattr(self.pipeline, "temporal", None) is None:
            # no bank here: its settings are only defaults, and would switch a bank off elsewhere
            for k in ("temporal_cache", "temporal_frames", "temporal_interval", "temporal_injection"):
                data.pop(k, None)
        if self._cn_count:
            data["controlnets"] = controlnet_entries(hot, self._cn_count)
        if self.lfos:
            data["lfos"] = {p: LfoSettings.from_lfo(lfo) for p, lfo in self.lfos.items()}
        try:
            preset = Preset.model_validate(data)
        except Exception as exc:
            reason = f"preset '{name}' not saved: {str(exc).splitlines()[0]}"
            log.warning("%s", reason)
            self._error("/sd/preset/save", reason)
            return
        self.saver.submit(name, preset, overwrite)

    # ------------------------------------------------------------------ tempo
    def _follow_tempo(self) -> None:
        """An external clock (Link) changed the tempo: take it as the fader value and echo it."""
        bpm = round(float(self.tempo.bpm), 2)
        if abs(bpm - self.values["bpm"]) >= BPM_FOLLOW_STEP:
            self.values["bpm"] = bpm
            self._feedback({"bpm": bpm})

    def _tap(self, at: float) -> None:
        bpm = self._taps.tap(at)
        if bpm is None:
            return
        bpm = round(bpm, 2)
        beat = self.tempo.beat_at(at)
        self.tempo.set_bpm(bpm, at)
        self.tempo.align(at, round(beat))  # the tap is a beat (Link: tempo only, phase is the session's)
        if self.values["bpm"] != bpm:
            self.values["bpm"] = bpm
            self._feedback({"bpm": bpm})

    def _downbeat(self, at: float) -> None:
        """``/sd/tempo/downbeat``: the bar starts here. The internal clock moves to the nearest bar
        line (at most half a bar, so the bar count stays); a Link session's phase is not ours."""
        if self.tempo.kind != "internal":
            self._error("/sd/tempo/downbeat", "with Ableton Link the bar phase is the session's: set the "
                        "downbeat in the app that leads the session")
            return
        bpb = self.tempo.beats_per_bar
        beat = self.tempo.beat_at(at)
        self.tempo.align(at, round(beat / bpb) * bpb)

    def _beat_report(self, now: float) -> None:
        """``/sd/status/beat`` (beat number, position in the bar in beats) once per beat."""
        beat = self.tempo.beat_at(now)
        n = math.floor(beat + BEAT_EPS)
        last = self._last_beat
        if last is None or n > last or n < last - 1:  # a clock moved back by a beat or more restarts
            self._last_beat = n
            if last is not None:
                self._status("beat", (n, round(bar_phase(beat, self.tempo.beats_per_bar), 4)))

    def tempo_status(self, now: float | None = None) -> dict[str, Any]:
        """Tempo figures for the status page (safe from any thread)."""
        now = self._clock() if now is None else now
        beat = self.tempo.beat_at(now)
        scheduled = self._scheduled
        return {"bpm": round(float(self.tempo.bpm), 2), "beat": math.floor(beat),
                "bar_phase": round(bar_phase(beat, self.tempo.beats_per_bar), 3),
                "beats_per_bar": self.tempo.beats_per_bar, "clock": self.tempo.kind, "peers": self.tempo.peers(),
                "quantize": self.quantize, "waiting_recall": scheduled.name if scheduled is not None else ""}

    # ------------------------------------------------------------------ LFOs
    def control_range(self, name: str) -> tuple[float, float]:
        return self.control_ranges.get(name) or PARAMS[name].control_range

    def _set_lfo_field(self, param: str, field: str, value: Any) -> bool:
        old = self.lfos.get(param)
        base = old or Lfo(seed=seed_for(param))
        new = base.with_field(field, value)
        if new == old:
            return False
        if not new.sync and field in ("rate", "sync"):  # free-running: no jump in the wave
            new = new.continued_from(base, self._now - self._t_origin, self.tempo.beat_at(self._now))
        self.lfos[param] = new
        return True

    def _replace_lfos(self, lfos: dict[str, Lfo]) -> None:
        """A preset's ``lfos:``: these and no others; every change is echoed."""
        changed: dict[str, Any] = {}
        for p in self.lfos:
            if p not in lfos:
                changed[lfo_key(p, "enabled")] = False
        for p, lfo in lfos.items():
            if self.lfos.get(p) != lfo:
                changed.update({lfo_key(p, k): v for k, v in lfo.fields().items()})
        self.lfos = dict(lfos)
        if changed:
            self._feedback(changed)

    def _apply_lfos(self, now: float) -> None:
        """Fader (or morph) value + each active LFO, clamped to the hard range, into the pipeline.
        ``values`` (what feedback echoes) is never touched; a parameter whose LFO stopped gets
        its fader value back."""
        mod: dict[str, float] = {}
        if self.lfos:
            beats = self.tempo.beat_at(now)
            seconds = now - self._t_origin
            for p, lfo in self.lfos.items():
                if not lfo.active:
                    continue
                spec = PARAMS[p]
                base = self._morph_now.get(p, float(self.values[p]))
                v = base + lfo.offset(seconds, beats, self.control_range(p))
                assert spec.lo is not None and spec.hi is not None
                mod[p] = min(float(spec.hi), max(float(spec.lo), v))
        previous, self.modulated = self.modulated, mod
        for p in previous.keys() | mod.keys():
            try:
                self._push(p, mod[p] if p in mod else self._morph_now.get(p, float(self.values[p])))
            except Exception as exc:  # one report, then the LFO is off (no failure per frame)
                self.lfos.pop(p, None)
                self.modulated = {k: v for k, v in self.modulated.items() if k != p}  # replaced, never
                # changed in place: the status page copies it from another thread
                self._control_failed(f"/sd/lfo/{p}", f"LFO on {p} failed and was removed: {exc}", exc, end_morph=False)
        self.effective = {**self.values, **self.modulated} if self.modulated else self.values

    def _push(self, name: str, v: float) -> None:
        if name in ("strength", "guidance", "delta", "smoothing"):
            self._apply_float(name, v)
        elif name == "filter_threshold":
            self.pipeline.set_filter(v)
        elif name == "prompt_mix":
            self._conditioning_dirty = True
        elif name == "seed_mix":
            self._noise_dirty = True
        # mix: the render loop reads `effective`

    def close(self) -> None:
        """Stop: hand every save still waiting in the inbox to the saver, then write them all.

        Called once the render loop has ended (it no longer ticks). Commands still queued are
        replayed on a copy of the live values, in order, without touching the pipeline, so each
        save records the state it was sent in; recalls and other commands that no longer matter
        are dropped, and saves are written (or refused with a logged error) before this returns.
        """
        if self._closed:
            return
        self._closed = True
        values = dict(self.values)
        dropped = 0
        for cmd in self.inbox.drain_all():
            if isinstance(cmd, SetParams):
                values.update(cmd.values)
            elif isinstance(cmd, SavePreset):
                self._save(cmd.name, cmd.overwrite, values)
            elif isinstance(cmd, RecallPreset):
                found = self._resolve(cmd.ref)
                if found is not None and not found[1].cold_conflicts(self.cold):
                    values.update(found[1].hot_values())  # a save after it records the preset
                    values.update(found[1].controlnet_values())
                dropped += 1
            else:
                dropped += 1
        if dropped:
            log.info("stopping: %d queued control command(s) not applied", dropped)
        if self.saver is not None:
            self.saver.close()


def temporal_values(pipeline: Any) -> dict[str, Any]:
    """The temporal settings the pipeline was built with (the bank resolves unset ones)."""
    out: dict[str, Any] = {"latent_feedback": float(getattr(pipeline, "latent_feedback", 0.0))}
    bank = getattr(pipeline, "temporal", None)
    if bank is not None:
        out.update(temporal_cache=bank.cache, temporal_frames=bank.frames, temporal_interval=bank.interval,
                   temporal_injection=bank.injection)
    return out


def merge_initial(params: dict[str, Any], table: Mapping[str, ParamSpec] | None = None) -> dict[str, Any]:
    """Initial values from the config, checked against the parameter table."""
    table = PARAMS if table is None else table
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        out[k] = table[k].check(v)
    return out


def controlnet_entries(values: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """The ``controlnets:`` list of a preset from flat live values (``controlnet_<i>_<knob>``)."""
    out = []
    for i in range(count):
        entry: dict[str, Any] = {}
        for knob in ("scale", "enabled"):
            if f"controlnet_{i}_{knob}" in values:
                entry[knob] = values[f"controlnet_{i}_{knob}"]
        if f"controlnet_{i}_canny_low" in values:
            entry["canny"] = {"low": values[f"controlnet_{i}_canny_low"], "high": values[f"controlnet_{i}_canny_high"]}
        out.append(entry)
    return out
