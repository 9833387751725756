"""The daemon's configuration: one YAML file, validated up front (unknown keys are errors).

Command-line flags override the file. Every error names the file, line, key and bad value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge.io.registry import AnySinkConfig, AnySourceConfig
from bridge.params import CANNY_MAX, MAX_CONTROLNETS, PARAMS
from bridge.yamlio import ConfigError, read_yaml_file, validate

CfgType = Literal["none", "full", "self", "initialize"]
Acceleration = Literal["auto", "none", "compile", "tensorrt", "onnxruntime"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _parse_size(v: Any) -> tuple[int, int]:
    """``"512x512"`` or ``[512, 512]`` -> (512, 512), with the same limits as presets."""
    from bridge.presets import parse_size

    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        v = f"{v[0]}x{v[1]}"
    if not isinstance(v, str):
        raise ValueError(f"size should look like 512x512, got {v!r}")
    return parse_size(v)


def check_host_port(v: str, *, allow_zero: bool = True, example: str = "127.0.0.1:9400") -> str:
    """``HOST:PORT`` with a port in 0..65535 (1..65535 when ``allow_zero`` is false: a place to
    send to). ValueError naming the problem otherwise."""
    if not isinstance(v, str):
        raise ValueError(f"should be HOST:PORT (e.g. {example}) but is {v!r}")
    host, sep, port = v.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"should be HOST:PORT (e.g. {example}) but has no port: {v!r}")
    if not port.isdigit():
        raise ValueError(f"port should be a number in HOST:PORT (e.g. {example}) but is {port!r}")
    low = 0 if allow_zero else 1
    if not low <= int(port) <= 65535:
        raise ValueError(f"the port of HOST:PORT {v!r} is outside {low}..65535"
                         + (" (0 picks a free one)" if allow_zero else ""))
    return v.strip()


class LoraConfig(_Strict):
    source: str = Field(description="LoRA folder, .safetensors file or hub id")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="LoRA strength")


class ModelConfig(_Strict):
    model: str = Field("stabilityai/sd-turbo", description="diffusers folder or hub id")
    vae: str = Field("taesd", description="taesd | full | folder / hub id")
    lcm_lora: str = Field("auto", description="auto | none | folder / hub id")
    loras: list[LoraConfig] = Field(default_factory=list)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps (Apple silicon)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class PipelineConfig(_Strict):
    size: tuple[int, int] = Field((512, 512), description="pipeline resolution WxH")
    steps: list[int] = Field(default_factory=lambda: [32, 45], min_length=1, max_length=10,
                             description="t_index_list (its length is the step count n)")
    frame_buffer: int = Field(1, ge=1, le=8, description="frames per stream call")
    cfg: CfgType = "self"
    add_noise: bool = True
    denoising_batch: bool = Field(True, description="stream batch (n-1 frames latency) or sequential")
    filter_max_skip: int = Field(10, ge=0, le=1000)
    acceleration: Acceleration = Field("auto", description="auto (what measured fastest on this device, see "
                                       "docs/acceleration.md) | none | compile | tensorrt | onnxruntime")
    engine_cache: str | None = Field(None, description="engine/ONNX cache folder (default ~/.cache/streambridge)")
    allow_build: bool | None = Field(
        None, description="build missing engines / compile missing inductor artefacts at start-up. Unset: "
        "`auto` on an NVIDIA GPU compiles once at the first start (with progress; cached for the next starts), "
        "nothing else builds; true: any missing engine is built at start-up; false: nothing is ever built at "
        "start-up, a missing one is a start-up error naming `streambridge engines build`")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> tuple[int, int]:
        return _parse_size(v)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        from stream_core.schedule import check_t_index_list

        return list(check_t_index_list(v))


class OutputConfig(_Strict):
    fps: float | None = Field(None, gt=0, le=240, description="publish rate; default the source's, else 30")
    size: tuple[int, int] | None = Field(None, description="scale the output to WxH (default: pipeline size)")
    resize: Literal["fit", "fill", "stretch"] = Field("fill", description="how input frames meet the pipeline size")
    no_signal: Literal["hold", "black", "slate"] = "slate"
    watchdog_ms: int = Field(500, ge=50, le=60_000, description="render watchdog: no processed frame for this "
                             "long while the input is live reports render: stalled and shows on_stall")
    on_stall: Literal["input", "black", "slate", "hold"] = Field(
        "input", description="shown while the render is stalled: the newest input frame, black, a slate "
        "or the last processed frame (hold)")
    phase_lock: bool = Field(True, description="nudge the output ticks (by at most 2 % of the rate) to sit "
                             "half a frame after the processed frames, so nearly equal rates do not judder")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> tuple[int, int] | None:
        return None if v is None else _parse_size(v)


class OscConfig(_Strict):
    listen: str = Field("127.0.0.1:9400", description="HOST:PORT to receive OSC on")
    feedback: list[str] = Field(default_factory=list, description="HOST:PORT targets for state echo/status")
    feedback_bundles: bool = Field(True, description="send each frame's echoed values (and each status update) "
                                   "packed in OSC bundles of at most 1,200 bytes, one datagram instead of one per "
                                   "value; false: every message on its own (for receivers that cannot read bundles)")
    allow: list[str] = Field(default_factory=list, description="sender allow-list (IP, IP:PORT or CIDR)")
    status_rate: float = Field(2.0, ge=0.0, le=60.0, description="status messages per second (0: off)")
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict,
                                                    description="control ranges for /sd/norm/<param>")
    enabled: bool = True
    receiver: Literal["process", "thread"] = Field(
        "process", description="where OSC is received, decoded and validated: 'process' (a small child process, "
        "so the daemon's process never spends its interpreter lock on a datagram; restarted on the "
        "same port if it dies) or 'thread' (inside the daemon's own process)")
    query_port: int | None = Field(None, ge=0, le=65535, description="OSCQuery HTTP port on the osc.listen host "
                                   "(every address with type, range and value, for controllers that browse); "
                                   "unset: off; 0: a free port")
    advertise: bool = Field(False, description="announce OSC (_osc._udp) and OSCQuery (_oscjson._tcp) over mDNS")
    name: str = Field("StreamBridge", min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _-]*$",
                      description="service name shown by OSCQuery / Bonjour browsers")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return check_host_port(v)

    @field_validator("feedback")
    @classmethod
    def _feedback(cls, v: list[str]) -> list[str]:
        return [check_host_port(item, allow_zero=False, example="127.0.0.1:9401") for item in v]


class StatusConfig(_Strict):
    listen: str | None = Field(None, description="HOST:PORT of the status page (health + input/output "
                               "preview); unset: off. No authentication: keep it on 127.0.0.1 or a trusted network")
    control: bool = Field(False, description="also serve the control page (/control: faders, prompts, presets, "
                          "live preview and plots) on status.listen, taking changes like OSC does (osc.allow "
                          "applies). Off by default: anyone who can open the page can change the show")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        return check_host_port(v, example="127.0.0.1:9480")


class PresetsConfig(_Strict):
    folder: str = Field("presets", description="preset folder (hot reloaded)")
    initial: str | None = Field(None, description="preset recalled at start-up")
    cache_size: int = Field(64, ge=4, le=4096, description="ad-hoc prompt embedding LRU size")
    max_count: int = Field(500, ge=1, le=100_000, description="most presets the folder may hold: "
                           "/sd/preset/save refuses a new one beyond it")
    quantize: Literal["off", "beat", "bar"] = Field(
        "off", description="when a recall starts: off (at once), beat or bar (on the next beat / bar "
        "boundary of the tempo clock); /sd/preset NAME now|beat|bar overrides it per recall")

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False: that is what the user wrote
        return "off" if v is False else v


class TempoConfig(_Strict):
    bpm: float = Field(120.0, ge=20.0, le=999.0, description="start tempo in beats per minute "
                       "(/sd/tempo/bpm, /sd/tempo/tap change it live)")
    beats_per_bar: int = Field(4, ge=1, le=64, description="beats in a bar (4 for 4/4); with Link, the quantum "
                               "the bar phase is shared over")
    link: bool = Field(False, description="use Ableton Link as the clock: follow the session's tempo and phase, "
                       "push our tempo changes to it (needs pip install \"streambridge[link]\")")


class ParamsConfig(_Strict):
    """Initial values of the live parameters (see the OSC table)."""

    prompt: str = PARAMS["prompt"].default
    negative_prompt: str = PARAMS["negative_prompt"].default
    prompt_a: str = ""
    prompt_b: str = ""
    prompt_mix: float = Field(0.0, ge=0, le=1)
    strength: float | None = Field(None, ge=0, le=1, description="overrides pipeline.steps when set")
    guidance: float = Field(PARAMS["guidance"].default, ge=PARAMS["guidance"].lo, le=PARAMS["guidance"].hi)
    delta: float = Field(PARAMS["delta"].default, ge=PARAMS["delta"].lo, le=PARAMS["delta"].hi)
    seed: int = Field(PARAMS["seed"].default, ge=0, le=2**31 - 1)
    seed_b: int = Field(PARAMS["seed_b"].default, ge=0, le=2**31 - 1)
    seed_mix: float = Field(0.0, ge=0, le=1)
    transition: float = Field(0.0, ge=0, le=120)
    transition_beats: float = Field(0.0, ge=0, le=PARAMS["transition_beats"].hi,
                                    description="default morph length in beats (0: use transition seconds)")
    bypass: bool = False
    mix: float = Field(1.0, ge=0, le=1)
    filter_threshold: float = Field(1.0, ge=0, le=1)
    smoothing: float = Field(0.0, ge=0, le=PARAMS["smoothing"].hi, description="temporal smoothing (0: off)")
    temporal_cache: bool | None = Field(None, description="cached attention on at start (unset: on when "
                                        "temporal.max_frames > 0)")
    temporal_frames: int | None = Field(None, ge=1, le=PARAMS["temporal_frames"].hi,
                                        description="cached frames read (unset: temporal.max_frames)")
    temporal_interval: int = Field(1, ge=1, le=PARAMS["temporal_interval"].hi,
                                   description="refresh the cache every N frames")
    temporal_injection: float = Field(0.0, ge=0, le=1, description="feature injection strength (0: off)")
    latent_feedback: float = Field(0.0, ge=0, le=PARAMS["latent_feedback"].hi,
                                   description="share of the previous output latent fed into the next input")


class TemporalConfig(_Strict):
    """The cached-attention bank built into the pipeline (live settings are in params)."""

    max_frames: int = Field(0, ge=0, le=4, description="frames the bank holds per layer and stage, 1..4 "
                            "(0: no bank, the U-Net runs untouched); memory and attention cost grow with it")


class CannyConfig(_Strict):
    low: float = Field(100.0, ge=0.0, le=CANNY_MAX, allow_inf_nan=False,
                       description="canny low threshold (live: /sd/controlnet/<i>/canny/low)")
    high: float = Field(200.0, ge=0.0, le=CANNY_MAX, allow_inf_nan=False,
                        description="canny high threshold (live: /sd/controlnet/<i>/canny/high)")


class ControlNetConfig(_Strict):
    """One ControlNet. Cold (a restart changes them): model, preprocessor, depth_model, source,
    on_loss, fade_s. Live (OSC, presets): scale, enabled, the canny thresholds."""

    model: str = Field(min_length=1, description="ControlNet: diffusers folder or hub id (loaded offline-first)")
    scale: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False,
                         description="initial conditioning scale (live: /sd/controlnet/<i>/scale)")
    enabled: bool = Field(True, description="initially on (live: /sd/controlnet/<i>/enabled)")
    preprocessor: Literal["none", "canny", "depth"] = Field(
        "none", description="none: the control frame is used as it is; canny: OpenCV edges (off the render "
        "thread); depth: a depth-estimation model on the device")
    depth_model: str | None = Field(None, min_length=1, description="for preprocessor depth: a transformers "
                                    "depth-estimation model folder or hub id")
    canny: CannyConfig = Field(default_factory=CannyConfig)
    source: Literal["input"] | AnySourceConfig = Field(
        "input", description="input (the pipeline's own frame) or a second source for control frames: a spec "
        "like 'ndi:TD Depth' / 'spout:Depth' / 'video:depth.mp4', or a source mapping like the main source's")
    on_loss: Literal["hold", "fade"] = Field(
        "hold", description="when the control source is lost: hold its last frame, or fade this ControlNet's "
        "scale to 0 (and back in once it is live again)")
    fade_s: float = Field(1.0, ge=0.0, le=60.0, allow_inf_nan=False, description="seconds of the fade (on_loss: fade)")

    @field_validator("source", mode="before")
    @classmethod
    def _source_spec(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().lower() == "input":
                return "input"
            from bridge.io.registry import parse_source_spec

            return parse_source_spec(v)  # ValueError naming the bad spec
        return v

    @model_validator(mode="after")
    def _depth(self) -> ControlNetConfig:
        if self.preprocessor == "depth" and not self.depth_model:
            raise ValueError("preprocessor depth needs depth_model: a transformers depth-estimation model "
                             "folder or hub id (e.g. depth-anything/Depth-Anything-V2-Small-hf)")
        if self.preprocessor != "depth" and self.depth_model:
            raise ValueError(f"depth_model is only used by preprocessor depth (this one is {self.preprocessor})")
        if self.preprocessor != "canny" and self.canny != CannyConfig():
            raise ValueError(f"canny thresholds are only used by preprocessor canny (this one is {self.preprocessor})")
        if self.on_loss == "fade" and self.source == "input":
            raise ValueError("on_loss: fade is for a second control source; with source: input the control "
                             "frame is the input frame and is never lost on its own")
        return self

    @property
    def second_source(self) -> bool:
        return self.source != "input"


class DaemonConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    source: AnySourceConfig = Field(default_factory=lambda: _default_source())
    sinks: list[AnySinkConfig] = Field(default_factory=lambda: [_default_sink()])
    output: OutputConfig = Field(default_factory=OutputConfig)
    osc: OscConfig = Field(default_factory=OscConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    presets: PresetsConfig = Field(default_factory=PresetsConfig)
    params: ParamsConfig = Field(default_factory=ParamsConfig)
    tempo: TempoConfig = Field(default_factory=TempoConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    controlnets: list[ControlNetConfig] = Field(
        default_factory=list, max_length=MAX_CONTROLNETS,
        description=f"ControlNets, in order (their residuals add); at most {MAX_CONTROLNETS}")

    @field_validator("sinks", mode="before")
    @classmethod
    def _yaml_null_sink(cls, v: Any) -> Any:
        # YAML reads a bare `type: null` as None; for a sink that can only mean the null sink
        if isinstance(v, list):
            return [{**item, "type": "null"} if isinstance(item, dict) and "type" in item and item["type"] is None
                    else item for item in v]
        return v

    def _check_temporal(self) -> None:
        _check_temporal_config(self)

    @model_validator(mode="after")
    def _cross_checks(self) -> DaemonConfig:
        if not self.sinks:
            raise ValueError("sinks: at least one sink is needed (use {type: null} to discard output)")
        if self.pipeline.acceleration not in ("none", "auto") and not self.pipeline.denoising_batch:
            raise ValueError(
                f"pipeline.denoising_batch: false runs the U-Net at varying batch sizes, which the "
                f"static-shape {self.pipeline.acceleration!r} engines cannot; use acceleration: none"
            )
        if self.status.control and not self.status.listen:
            raise ValueError("status.control: the control page is served on status.listen, which is not set")
        self._check_temporal()
        if not self.osc.enabled and (self.osc.query_port is not None or self.osc.advertise):
            raise ValueError("osc.query_port / osc.advertise describe the OSC port, but osc.enabled is false")
        return self


def _check_temporal_config(cfg: DaemonConfig) -> None:
    m, p = cfg.temporal.max_frames, cfg.params
    if m == 0:
        if p.temporal_cache or p.temporal_frames is not None or p.temporal_injection > 0:
            raise ValueError("params.temporal_*: the temporal bank is not built (temporal.max_frames is 0); "
                             "set temporal.max_frames to 1..4")
        return
    if p.temporal_frames is not None and p.temporal_frames > m:
        raise ValueError(f"params.temporal_frames: {p.temporal_frames} is more than temporal.max_frames ({m})")


def _default_source():
    from bridge.io.registry import parse_source_config

    return parse_source_config({"type": "pattern"})


def _default_sink():
    from bridge.io.registry import parse_sink_config

    return parse_sink_config({"type": "null"})


def load_config(path: str | os.PathLike[str] | None) -> DaemonConfig:
    """Load and validate a config file (``None``: all defaults)."""
    return load_config_located(path)[0]


def load_config_located(path: str | os.PathLike[str] | None) -> tuple[DaemonConfig, dict[tuple[Any, ...], int]]:
    """:func:`load_config` plus the file's line of every key path (empty without a file)."""
    if path is None:
        return DaemonConfig(), {}
    data, lines = read_yaml_file(path)
    return validate(DaemonConfig, data, str(path), lines), lines


def apply_overrides(cfg: DaemonConfig, overrides: dict[str, Any]) -> DaemonConfig:
    """Return a new config with dotted-key overrides (``{"pipeline.size": "512x512"}``) applied and
    everything validated again. Errors name the flag's key."""
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    try:
        return DaemonConfig.model_validate(data)
    except Exception as exc:  # pydantic ValidationError -> located message
        from pydantic import ValidationError

        from bridge.yamlio import format_validation_error

        if isinstance(exc, ValidationError):
            raise ConfigError("\n".join(format_validation_error(exc, "command line"))) from None
        raise


def default_cache_dir() -> Path:
    env = os.environ.get("STREAMBRIDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "streambridge"
