"""The one place that wires everything: source worker -> render loop -> publisher, plus OSC,
presets, prompt cache and feedback.

Threads: source worker (capture + pre-processing) and its clock watchdog, render loop
(:mod:`bridge.render_loop`, the only thread that touches the U-Net and VAE), publisher
(steady-rate output, render watchdog, bypass from the input side), one worker per sink, prompt
encoder (text encoder only), preset watcher, OSC receiver, feedback/status. They meet in
latest-wins mailboxes and queues.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import DaemonConfig, default_cache_dir
from bridge.control.feedback import FeedbackQueue
from bridge.control.ratelog import RateLimitedLog
from bridge.control.surface import SetParams
from bridge.io.registry import create_sink, create_source, interrupt_opens
from bridge.io.reporting import OpenErrorReport, ReportingSource
from bridge.live import LiveController, merge_initial
from bridge.params import live_params
from bridge.presets import ColdSettings, ControlNetCold, PresetStore
from bridge.prompt_cache import PromptCache
from bridge.render_loop import RenderLoop
from bridge.runtime.convert import Resizer
from bridge.runtime.health import SourceHealth
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import Publisher
from bridge.runtime.source_worker import SourceWorker

log = logging.getLogger("streambridge.daemon")


class StartupError(RuntimeError):
    """A fatal start-up problem; the message is shown to the user as is."""


@dataclass
class DaemonOptions:
    osc: bool = True
    presets: bool = True
    prewarm_timeout: float = 0.0  # wait this long for preset pre-warm before going live
    # model components built by the caller (e.g. random weights for `doctor --gpu`) instead of
    # loading cfg.model; they must live on cfg.model's device
    components: Any = None
    allow_download: bool = False  # fetch weights missing here from the hub (never by default)


class Daemon:
    def __init__(self, cfg: DaemonConfig, options: DaemonOptions | None = None) -> None:
        self.cfg = cfg
        self.options = options or DaemonOptions()
        self.metrics = Metrics()
        self.frames_in: LatestMailbox[FramePacket] = LatestMailbox(1)
        # one stream call yields frame_buffer frames at once: room for all of them, taken oldest
        # first, one per output tick (with 1 this is plain latest-wins)
        self.frames_out: LatestMailbox[FramePacket] = LatestMailbox(cfg.pipeline.frame_buffer)
        # the newest input frame, straight from the source worker: bypass and the render-stall
        # fallback read it, so a render thread stuck in a model call cannot hold them up
        self.frames_preview: LatestMailbox[FramePacket] = LatestMailbox(1)
        self.metrics.add_mailbox("input", self.frames_in)
        self.metrics.add_mailbox("output", self.frames_out)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # bounded: values latest-wins per address, error replies capped (see FeedbackQueue)
        self._fb_queue = FeedbackQueue()
        self._rejected_log = RateLimitedLog(log, logging.INFO, what="rejected OSC messages")
        self.engine = None
        self.controller: LiveController | None = None
        self.cache: PromptCache | None = None
        self.presets: PresetStore | None = None
        self.source_worker: SourceWorker | None = None
        self.source_report: OpenErrorReport | None = None
        self.publisher: Publisher | None = None
        self.osc = None
        self.feedback = None
        self.status_page = None
        self.oscquery = None
        self.advertiser = None
        self.render: RenderLoop | None = None
        self.tempo: Any = None  # the beat clock (bridge.tempo): internal, or Ableton Link
        self.controlnets: Any = None  # bridge.controlnet.ControlNetFeed when controlnets: are configured
        # the live parameter table: the static one plus the configured ControlNets' knobs
        self.params = live_params([c.preprocessor for c in cfg.controlnets])
        self._bypass = bool(cfg.params.bypass)  # set on OSC receipt, not on the render thread
        self._last_source_state = "connecting"  # for the clean-stream reset after a gap
        self._status_extra: dict[str, Any] = {"preset": ""}
        #: threads :meth:`stop` had to leave inside a backend call (see ``bridge.cmd_run``)
        self.abandoned: list[str] = []

    # ------------------------------------------------------------------ build
    def _build_engine(self) -> None:
        from stream_core.engine import StreamEngine
        from stream_core.models import (
            LoraSpec,
            ModelLoadError,
            ModelNotFoundError,
            ModelSpec,
            load_components,
        )
        from stream_core.pipeline import StreamSettings
        from stream_core.schedule import strength_to_t_index_list

        m, p, params = self.cfg.model, self.cfg.pipeline, self.cfg.params
        spec = ModelSpec(
            model=m.model, vae=m.vae, lcm_lora=m.lcm_lora,
            loras=[LoraSpec(lo.source, lo.scale) for lo in m.loras], device=m.device, dtype=m.dtype,
            allow_download=self.options.allow_download,
        )
        from stream_core.controlnet import ControlNetSpec
        from stream_core.models import with_controlnets

        cn_specs = [ControlNetSpec(c.model, c.scale, c.preprocessor, getattr(c, "enabled", True),
                                   getattr(c, "depth_model", None)) for c in getattr(self.cfg, "controlnets", None) or ()]
        try:
            components = self.options.components if self.options.components is not None else load_components(spec)
            if cn_specs or getattr(components, "controlnets", None):
                components = with_controlnets(components, cn_specs, allow_download=self.options.allow_download)
        except (ModelNotFoundError, ModelLoadError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        steps = tuple(p.steps)
        if params.strength is not None:
            steps = strength_to_t_index_list(params.strength, len(steps))
        settings = StreamSettings(
            width=p.size[0], height=p.size[1], t_index_list=steps, frame_buffer_size=p.frame_buffer,
            cfg_type=p.cfg, guidance_scale=params.guidance, delta=params.delta, seed=params.seed,
            add_noise=p.add_noise, filter_threshold=params.filter_threshold, filter_max_skip=p.filter_max_skip,
            smoothing=params.smoothing,
            **self._temporal_settings(),
            denoising_batch=p.denoising_batch,
        )
        runner, choice = self._build_runner(components, len(steps))
        self.engine = StreamEngine(components, settings, params.prompt, params.negative_prompt, runner=runner,
                                   acceleration_info=choice.as_dict(), controlnets=cn_specs or None)
        log.info(
            "pipeline ready: %dx%d, steps %s, cfg %s, frame buffer %d, %s on %s (latency %d frame(s))",
            p.size[0], p.size[1], list(steps), p.cfg, p.frame_buffer, components.info["dtype"],
            components.info["device"], self.engine.pipeline.latency_frames,
        )

    def _temporal_settings(self) -> dict[str, Any]:
        """StreamSettings for the cached-attention bank and latent feedback (stream_core.temporal)."""
        t, params = self.cfg.temporal, self.cfg.params
        out: dict[str, Any] = {"latent_feedback": params.latent_feedback, "temporal_max_frames": t.max_frames}
        if t.max_frames:
            out.update(
                temporal_cache=True if params.temporal_cache is None else params.temporal_cache,
                temporal_frames=params.temporal_frames, temporal_interval=params.temporal_interval,
                temporal_injection=params.temporal_injection,
            )
        return out
    def _build_controlnets(self) -> None:
        """The control frames' side: a feed with a source worker per second source (started with
        the main source)."""
        if not self.cfg.controlnets:
            return
        from functools import partial

        from bridge.controlnet import ControlNetFeed, make_source_worker

        def on_state(index: int, state: str, detail: str) -> None:
            self._fb_queue.put(("status", {f"control/{index}/state": state}))

        make = partial(make_source_worker, size=tuple(self.cfg.pipeline.size), resize=self.cfg.output.resize,
                       on_state=on_state)
        self.controlnets = ControlNetFeed(self.cfg.controlnets, tuple(self.cfg.pipeline.size), make_worker=make)

    def _build_runner(self, components: Any, n_steps: int) -> tuple[Any, Any]:
        """The acceleration part of the engine: resolve ``auto``, build the runner (None: eager)."""
        from stream_core.accel.auto import runner_for
        from stream_core.accel.errors import AccelError

        p = self.cfg.pipeline
        acceleration = p.acceleration
        try:
            return runner_for(
                components, acceleration, width=p.size[0], height=p.size[1], steps=n_steps,
                frame_buffer=p.frame_buffer, cfg_type=p.cfg, allow_build=p.allow_build,
                cache_dir=Path(p.engine_cache).expanduser() if p.engine_cache else default_cache_dir(),
                denoising_batch=p.denoising_batch, temporal=self.cfg.temporal.max_frames,
            )
        except AccelError as exc:
            raise StartupError(str(exc)) from None

    def _cold(self) -> ColdSettings:
        p, m = self.cfg.pipeline, self.cfg.model
        from bridge.presets import source_key

        return ColdSettings(
            model=m.model, vae=m.vae, size=tuple(p.size), steps=len(p.steps), frame_buffer=p.frame_buffer,
            cfg=p.cfg, acceleration=p.acceleration,
            controlnets=tuple(ControlNetCold(c.model, c.preprocessor, source_key(c.source))
                              for c in self.cfg.controlnets),
        )

    def _build_control(self) -> None:
        import torch

        engine = self.engine
        encoder = engine.encoder
        side_stream = torch.cuda.Stream(device=encoder.device) if encoder.device.type == "cuda" else None

        def encode(text: str):
            # runs on the prompt-encoder thread; touches only the text encoder
            if encoder.device.type == "mps":  # MPS has one queue: finish the work before the hand-off
                emb = encoder.encode(text)
                torch.mps.synchronize()
                return emb
            if side_stream is None:
                return encoder.encode(text)
            with torch.cuda.stream(side_stream):
                emb = encoder.encode(text)
            side_stream.synchronize()
            return emb

        def on_encode_error(text: str, exc: BaseException) -> None:
            self._fb_queue.put(("error", ("/sd/prompt", f"cannot encode prompt: {exc}")))

        self.cache = PromptCache(encode, capacity=self.cfg.presets.cache_size, on_error=on_encode_error)
        if self.options.presets:
            folder = Path(self.cfg.presets.folder)
            if not folder.is_dir():
                raise StartupError(f"presets folder {folder} does not exist (set presets.folder or --presets)")
            self.presets = PresetStore(folder)
            for name, reason in self.presets.errors().items():
                log.warning("preset %s is not usable: %s", name, reason)
        params = self.cfg.params.model_dump()
        if self.cfg.controlnets:
            from bridge.controlnet import initial_values

            params.update(initial_values(self.cfg.controlnets))
        if params.get("strength") is None:
            from stream_core.schedule import t_index_list_to_strength

            params["strength"] = round(t_index_list_to_strength(self.engine.pipeline.t_index_list), 4)
        from bridge.tempo import LinkUnavailable, make_clock

        tempo_cfg = self.cfg.tempo
        try:
            self.tempo = make_clock(tempo_cfg.bpm, tempo_cfg.beats_per_bar, tempo_cfg.link)
        except LinkUnavailable as exc:
            raise StartupError(str(exc)) from None
        params["bpm"] = tempo_cfg.bpm
        feed = self.controlnets
        self.controller = LiveController(
            engine.pipeline, self.cache, self.presets, self._cold(), initial=merge_initial(params, self.params),
            params=self.params, on_canny=feed.thresholds.set if feed is not None else (lambda i, lo, hi: None),
            feedback=lambda changed: self._fb_queue.put(("params", changed)),
            error=lambda address, reason: self._fb_queue.put(("error", (address, reason))),
            status=self._set_status, max_presets=self.cfg.presets.max_count,
            tempo=self.tempo, quantize=self.cfg.presets.quantize, control_ranges=self.cfg.osc.ranges,
        )
        v = self.controller.values
        warm = self.controller.prewarm([v["prompt"], v["negative_prompt"]])
        warm.wait(30.0)
        if self.presets is not None:
            handle = self.controller.prewarm()
            if self.options.prewarm_timeout > 0:
                handle.wait(self.options.prewarm_timeout)
            self.presets.start_watching(self.controller.notify_presets_changed)
            if self.cfg.presets.initial:
                from bridge.control.surface import RecallPreset

                self.controller.submit([RecallPreset(self.cfg.presets.initial)])

    def _set_status(self, key: str, value: Any) -> None:
        self._status_extra[key] = value
        self._fb_queue.put(("status", {key: value}))

    def _build_osc(self) -> None:
        from bridge.control.feedback import FeedbackSender
        from bridge.control.isolated import IsolatedOscServer
        from bridge.control.server import OscServer
        from bridge.control.surface import ControlSurface

        o = self.cfg.osc
        try:
            self.feedback = FeedbackSender(o.feedback, ranges=o.ranges, status_hz=max(o.status_rate, 0.01),
                                           params=self.params, bundle=o.feedback_bundles)
        except ValueError as exc:
            raise StartupError(f"osc.feedback: {exc}") from None
        if not (o.enabled and self.options.osc):
            return
        host, _, port_s = o.listen.rpartition(":")
        try:
            port = int(port_s)
        except ValueError:
            raise StartupError(f"osc.listen should be HOST:PORT, got {o.listen!r}") from None

        def on_error(address: str, reason: str) -> None:
            self._fb_queue.put(("error", (address, reason)))

        surface = ControlSurface(o.ranges, params=self.params)
        try:
            if o.receiver == "process":
                self.osc = IsolatedOscServer(
                    host or "127.0.0.1", port, on_batch=self.submit, on_error=on_error, allow=o.allow,
                    surface=surface, on_errors_dropped=lambda n: self._fb_queue.put(("errors_dropped", n)))
            else:
                self.osc = OscServer(host or "127.0.0.1", port, on_batch=self.submit, on_error=on_error,
                                     allow=o.allow, surface=surface)
            self.osc.start()
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot listen for OSC on {o.listen}: {exc}") from None
        log.info("OSC listening on %s:%d%s", *self.osc.address, f", feedback to {', '.join(o.feedback)}" if o.feedback else "")
        query_port = None
        if o.query_port is not None:
            from bridge.control.oscquery import OscQueryServer

            presets = self.presets
            try:
                self.oscquery = OscQueryServer(
                    host or "127.0.0.1", o.query_port, name=o.name, osc_address=self.osc.address,
                    surface=self.osc.surface, values=self.controller.snapshot,
                    presets=presets.names if presets is not None else list, status=self.status, allow=o.allow)
            except OSError as exc:
                raise StartupError(f"osc.query_port: cannot listen on {host or '127.0.0.1'}:{o.query_port} "
                                   f"({exc.strerror or exc}); choose another port (0 picks a free one)") from None
            self.oscquery.start()
            query_port = self.oscquery.address[1]
        if o.advertise:
            from bridge.control.oscquery import Advertiser

            self.advertiser = Advertiser(o.name, self.osc.address[0], self.osc.address[1], query_port)
            self.advertiser.start()

    def _build_io(self) -> None:
        w, h = self.cfg.pipeline.size
        resizer = Resizer(w, h, self.cfg.output.resize)
        src_cfg = self.cfg.source

        def on_state(state: str, detail: str) -> None:
            previous, self._last_source_state = self._last_source_state, state
            if state == "live" and previous in ("stalled", "lost", "reconnecting") and self.render is not None:
                # a clean stream after the gap: no frame built on latents from before it
                self.render.request_reset(f"source live again after {previous}")
            self._fb_queue.put(("status", {"source": self._source_state()}))

        # live -> stalled after max(250 ms, 3 frame intervals) -> lost after max(0.75 s, 2 stall
        # timeouts) -> reconnecting with backoff 0.25 s doubling to 5 s
        health = SourceHealth(min_stall_s=0.25, stall_intervals=3.0, lost_after_s=0.75,
                              backoff_initial_s=0.25, backoff_max_s=5.0)
        self.source_report = OpenErrorReport(
            src_cfg.type, on_change=lambda reason: self._fb_queue.put(
                ("status", {"source": self._source_state(), "source_error": reason})))
        make_source = ReportingSource.factory(lambda: create_source(src_cfg), self.source_report)
        feed = self.controlnets
        self.source_worker = SourceWorker(make_source, resizer, self.frames_in, self.metrics,
                                          on_state=on_state, health=health, name=f"source:{src_cfg.type}",
                                          previews=self.frames_preview,
                                          derive=feed.derive_input if feed is not None and feed.needs_input_hook
                                          else None)
        fps = self.cfg.output.fps or getattr(src_cfg, "fps", None) or 30.0
        sinks = [(lambda c=c: create_sink(c)) for c in self.cfg.sinks]
        self.publisher = Publisher(
            sinks, float(fps), lambda: self.frames_out.get(0), self.metrics, self.cfg.output.no_signal,
            source_state=lambda: self.source_worker.state, size=self.cfg.output.size, default_size=(w, h),
            arrivals=self.frames_out.last_taken, phase_lock=self.cfg.output.phase_lock,
            get_input=self.frames_preview.take_latest, bypass=lambda: self._bypass,
            watchdog_s=self.cfg.output.watchdog_ms / 1000.0, on_stall=self.cfg.output.on_stall,
            on_render_state=lambda state, detail: self._fb_queue.put(("status", {"render": state})),
        )
        self.render = RenderLoop(
            self.engine, self.controller, self.frames_in, self.frames_out, self.metrics,
            bypass=lambda: self._bypass, on_progress=self.publisher.note_render_progress,
            on_error=lambda address, reason: self._fb_queue.put(("error", (address, reason))),
            controlnets=self.controlnets,
        )

    def start(self) -> None:
        """Build everything and start the threads. Raises :class:`StartupError` on fatal problems."""
        t0 = time.perf_counter()
        from bridge.preflight import backend_problems

        # a backend that cannot run on this OS (or lacks its extra) is a start-up error, found
        # before the model loads, never a connection retried for ever
        unavailable = backend_problems(self.cfg)
        if unavailable:
            raise StartupError("; ".join(unavailable))
        import cv2

        # OpenCV's pool busy-waits after every small call: more CPU per frame than it saves here
        cv2.setNumThreads(1)
        self._build_engine()
        self._build_controlnets()
        self._build_control()
        self._build_osc()
        self._build_io()
        self._build_status_page()
        self.publisher.start()
        render = threading.Thread(target=self.render.run, args=(self._stop,), name="render", daemon=True)
        fb = threading.Thread(target=self._feedback_loop, name="feedback", daemon=True)
        self._threads = [render, fb]
        render.start()
        fb.start()
        self.source_worker.start()
        if self.controlnets is not None:
            self.controlnets.start()
        log.info("StreamBridge running (start-up %.1f s)", time.perf_counter() - t0)

    def _build_status_page(self) -> None:
        listen = self.cfg.status.listen
        if not listen:
            return
        from bridge.status_page import StatusPage

        host, _, port = listen.rpartition(":")
        control = self._control_api() if self.cfg.status.control else None
        try:
            self.status_page = StatusPage(host, int(port), self.page_status, self._preview_frame,
                                          allow=self.cfg.osc.allow, control=control)
        except ValueError as exc:
            raise StartupError(f"osc.allow: {exc}") from None
        except OSError as exc:
            raise StartupError(f"status.listen: cannot listen on {listen} ({exc.strerror or exc}); choose "
                               "another HOST:PORT (port 0 picks a free one) or leave it unset") from None
        self.status_page.start()

    def _control_api(self) -> Any:
        """The control page's API: the OSC table's validator, the OSC receiver's submit path, a
        refusal reported like a refused OSC packet."""
        from bridge.control.surface import ControlSurface
        from bridge.web.api import ControlApi

        presets = self.presets
        return ControlApi(
            self.osc.surface if self.osc is not None else ControlSurface(self.cfg.osc.ranges, self.params), self.submit,
            values=self.controller.snapshot, presets=presets.names if presets is not None else list,
            status=self._control_page_status,
            on_error=lambda address, reason: self._fb_queue.put(("error", (address, reason))))

    def _control_page_status(self) -> dict[str, Any]:
        """:meth:`status` plus the beat clock (the page's tempo line and bar dots)."""
        out = self.status()
        if self.controller is not None and self.controller.tempo is not None:
            out["tempo"] = self.controller.tempo_status()
        return out

    def _preview_frame(self, which: str) -> np.ndarray | None:
        if which == "input":
            return self._preview_in
        return self.publisher.last_frame if self.publisher is not None else None

    @property
    def _preview_in(self) -> np.ndarray | None:
        """The newest input frame (a reference, never written to), from the source side."""
        frame = self.publisher.last_input if self.publisher is not None else None
        if frame is None and self.render is not None:
            frame = self.render.last_input
        return frame

    @property
    def frames_rendered(self) -> int:
        return self.render.frames_rendered if self.render is not None else 0

    @property
    def render_errors(self) -> int:
        return self.render.render_errors if self.render is not None else 0

    def submit(self, batch: list[Any]) -> Any:
        """Queue a validated control batch for the render thread. Bypass takes effect at once
        (the publisher reads it), so it works even while the render thread is stuck. A batch the
        controller refuses (its command queue is full) changes nothing, bypass included."""
        refusal = self.controller.submit(batch)
        if refusal is None:
            for command in batch:
                if isinstance(command, SetParams) and "bypass" in command.values:
                    self._bypass = bool(command.values["bypass"])
        return refusal

    # ------------------------------------------------------------------ threads
    def follow_source_rate(self) -> float | None:
        """Without a configured output rate, publish at the source's measured rate (once a dozen
        intervals are known; changes under 5 % are ignored). Returns the new rate if changed."""
        if self.cfg.output.fps is not None or self.source_worker is None or self.publisher is None:
            return None
        health = self.source_worker.health
        if health.state != "live" or health.interval_samples < 12:
            return None
        interval = health.interval_estimate()
        if not interval or interval <= 0:
            return None
        fps = round(min(120.0, max(1.0, 1.0 / interval)), 2)
        if abs(fps - self.publisher.fps) <= 0.05 * self.publisher.fps:
            return None
        log.info("output rate follows the source: %.2f fps", fps)
        self.publisher.set_fps(fps)
        return fps

    def _feedback_loop(self) -> None:
        fb = self.feedback
        rate = self.cfg.osc.status_rate
        next_rate_check = last_pass = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_rate_check:
                next_rate_check = time.monotonic() + 1.0
                try:
                    self.follow_source_rate()
                except Exception:
                    log.exception("following the source rate failed")
            # everything queued since the last pass: newest value per address, capped errors; at
            # most one pass per 10 ms, so a flood of changes does not wake this thread per message
            rest = 0.01 - (time.monotonic() - last_pass)
            if rest > 0:
                self._stop.wait(rest)
            last_pass = time.monotonic()
            params, status, errors, dropped = self._fb_queue.take(timeout=0.05)
            live = self.status_page.live if self.status_page is not None else None
            if live is not None and (params or status or errors):
                try:
                    live.publish(params, status, errors)  # the control page's events
                except Exception:
                    log.exception("control page events failed")
            for address, reason in errors:
                self._rejected_log.log("rejected %s: %s", address, reason)
            self._rejected_log.skip(dropped)
            self._rejected_log.flush()
            if fb is None:
                continue
            try:
                if params:
                    fb.send_params(params)
                if status:
                    fb.send_status(status)
                fb.count_suppressed(dropped)
                for address, reason in errors:
                    fb.send_error(address, reason)
                if rate > 0 and fb.targets:
                    fb.maybe_send_status(self.status)
            except Exception:
                log.exception("feedback failed")

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """What /sd/status/* reports: output and processed fps, end-to-end latency, source state,
        preset, and frames dropped by the mailboxes."""
        snap = self.metrics.snapshot()
        lat = snap["latency_ms"].get("end_to_end") or {}
        return {
            "fps": round(float(snap["fps"].get("published", 0.0)), 2),
            "fps_processed": round(float(snap["fps"].get("processed", 0.0)), 2),
            "latency_ms": round(float(lat.get("p50_ms") or 0.0), 2),
            "latency_p95_ms": round(float(lat.get("p95_ms") or 0.0), 2),
            "source": self._source_state(),
            "source_error": self.source_report.reason if self.source_report is not None else "",
            "render": self.publisher.render_state if self.publisher is not None else "ok",
            "preset": str(self._status_extra.get("preset", "")),
            "dropped": int(sum(snap["dropped"].values())),
            "rejected_frames": int(snap["counters"].get("rejected_frames", 0)),
            **(self.controlnets.status() if self.controlnets is not None else {}),
        }

    def _source_state(self) -> str:
        """The worker's state, except ``error`` while a source that never delivered keeps failing
        (``source_error`` says why)."""
        if self.source_worker is None:
            return "idle"
        state = self.source_worker.state
        if state == "connecting" and self.source_report is not None and self.source_report.reason:
            return "error"
        return state

    def page_status(self) -> dict[str, Any]:
        """The status page's figures: what the control page gets, plus the output and sink details."""
        out = self._control_page_status()
        pub = self.publisher
        if pub is not None:
            offset = pub.phase_offset
            out.update(showing=pub.showing, output_fps_target=round(pub.fps, 2),
                       phase_offset_ms=None if offset is None else round(1000 * offset, 2), sinks=pub.sink_stats())
        out.update(frames_rendered=self.frames_rendered, render_errors=self.render_errors)
        if self.render is not None:
            out.update(nonfinite_outputs=self.render.nonfinite_outputs, last_render_error=self.render.last_error)
        if pub is not None:
            out.update(render_detail=pub.render_detail, on_stall=pub.on_stall)
        if self.engine is not None:
            out["acceleration"] = self.engine.acceleration_info
        if self.controller is not None:
            out["params"] = self.controller.snapshot()
            out["modulated"] = dict(self.controller.modulated)  # LFO values (the faders are in params)
        if self.controlnets is not None:
            out["controlnets"] = self.controlnets.details()
        return out

    # ------------------------------------------------------------------ stop
    def wait(self, duration: float | None = None) -> None:
        end = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            if end is not None and time.monotonic() >= end:
                break
            self._stop.wait(0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop capture, finish the frame in flight, release senders and receivers."""
        log.info("stopping")
        self.abandoned = []
        if self.source_report is not None:
            self.source_report.close()
        if self.source_worker is not None:
            interrupt_opens()  # a source still looking for its sender gives up now
            if not self.source_worker.stop(timeout=2.0):
                self.abandoned.append(self.source_worker.name)
        if self.controlnets is not None:
            interrupt_opens()  # a control source still looking for its sender gives up now
            self.abandoned += self.controlnets.stop(timeout=2.0)
        self._stop.set()
        self.frames_in.close()
        for t in self._threads:
            t.join(timeout=10.0)
            if t.is_alive():
                self.abandoned.append(t.name)
        if self.publisher is not None:
            if not self.publisher.stop(timeout=2.0):
                self.abandoned.append("publisher")
        if self.osc is not None:
            self.osc.stop()
        if self.status_page is not None:
            self.status_page.stop()
        if self.advertiser is not None:
            self.advertiser.stop()
        if self.oscquery is not None:
            self.oscquery.stop()
        if self.presets is not None:
            self.presets.stop()
        if self.cache is not None:
            self.cache.stop()
        if self.controller is not None:
            self.controller.close()
        if self.tempo is not None:
            self.tempo.close()
        if self.feedback is not None:
            self.feedback.close()
        log.info("stopped: %d frames rendered, %d render errors", self.frames_rendered, self.render_errors)
