"""ONNX export of the four networks at the stream's static shapes.

Graphs and their tensors (every graph has static shapes; ``B`` = the pipeline's ``unet_batch``,
``F`` = frame buffer size, ``h, w`` = latent size = image size / 8, ``L, D`` = tokens, text width):

===========  ====================================================================  ==============
component    inputs                                                                output
===========  ====================================================================  ==============
``unet``     ``latents`` (B,4,h,w), ``timesteps`` (B,) float32, ``text_embeds``   ``eps`` (B,4,h,w)
             (B,L,D)
``vae_enc``  ``images`` (F,3,H,W) in [-1, 1]                                       ``latents``, scaled
``vae_dec``  ``latents`` (F,4,h,w), scaled                                         ``images`` [-1, 1]
``text``     ``input_ids`` (1,L) int64                                             ``hidden_states``
===========  ====================================================================  ==============

With ControlNets, each ControlNet is its own graph and the U-Net has a second graph that takes
their summed residuals (so a disabled ControlNet costs nothing: its graph is not run, and the
plain ``unet`` graph runs when none is active):

==============  ===============================================================  ================
``controlnet``  ``latents``, ``timesteps``, ``text_embeds`` (as ``unet``), ``cond``  ``res_0`` ...
                (B,3,H,W) in [0, 1], ``scale`` (1,)                                ``res_{m-1}``
``unet_res``    ``latents``, ``timesteps``, ``text_embeds``, ``res_0`` ...         ``eps``
                ``res_{m-1}`` (the down-block residuals, then the mid-block one)
==============  ===============================================================  ================

The scale is an input (a live change needs no new graph) and is applied inside the ControlNet
graph, as in :func:`stream_core.runner.controlnet_residuals`.

Alternatively (``AccelOptions.controlnet_graph = "unet"``) every ControlNet runs inside one
``unet_cn`` graph: inputs ``latents``, ``timesteps``, ``text_embeds``, ``cond_0``, ``scale_0``,
``cond_1``, ``scale_1``, ... and output ``eps``. The residuals never leave the graph, but an
inactive ControlNet is then computed at scale 0 while another one is active (when none is, the
plain ``unet`` graph runs).

With a temporal bank (``stream_core.temporal``, ``temporal.max_frames`` = M > 0) the U-Net graph
is ``unet_tmp`` (and ``unet_res_tmp`` for ControlNets: the residuals follow ``inj_scale``): the
bank is a set of graph inputs and the keys/values/outputs its layers compute are outputs, so the
ring never lives inside the graph and every live setting is a tensor value (``R`` = stream rows
``n * f``, ``T_i, C_i`` = layer ``i``'s tokens and channels)::

    inputs   latents, timesteps, text_embeds, attn_bias (M,), inj_bias (M,), inj_scale (),
             [res_0 ... res_{m-1},] bank_k_i (R,M,T_i,C_i), bank_v_i (...), bank_o_i (R,M,T_i,C_o)
    outputs  eps, new_k_i (B,T_i,C_i), new_v_i (...), new_o_i (B,T_i,C_o)

Timesteps, text embeddings and latents are graph *inputs*, so prompt, strength (t_index_list),
guidance, delta and seed changes never need a new graph. Timesteps are exported as float32:
diffusers turns them into float32 for the sinusoidal embedding anyway, so the graph computes the
same numbers as the long-typed torch call (integers below 2**24 are exact in float32), and
TensorRT handles float inputs everywhere while its int64 support varies by version.

Exporter: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``) at
opset 18 is the default. It writes one external-data file for graphs over 2 GB and is the path
torch maintains. The TorchScript exporter (``exporter="torchscript"``) also works for these
models and is ~7x faster to export the tiny test model; it is kept as an explicit choice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.errors import EngineBuildError, EngineVerifyError, missing_package
from stream_core.runner import (
    controlnet_residuals,
    unet_with_residuals,
    vae_decode,
    vae_encode,
    vae_scaling_factor,
)

log = logging.getLogger(__name__)

OPSET = 18
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
EXTERNAL_DATA_BYTES = 3 << 29  # 1.5 GiB of weights: store them beside the graph
#: the graph components that carry a temporal bank (same names as the cache's)
TEMPORAL_GRAPHS: tuple[str, ...] = ("unet_tmp", "unet_res_tmp")
#: a temporal graph's inputs that hold the bank's read settings (then come its rings)
BANK_SETTINGS: tuple[str, ...] = ("attn_bias", "inj_bias", "inj_scale")
IO_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unet": (("latents", "timesteps", "text_embeds"), ("eps",)),
    "vae_enc": (("images",), ("latents",)),
    "vae_dec": (("latents",), ("images",)),
    "text": (("input_ids",), ("hidden_states",)),
}


def exporter_tag(exporter: str) -> str:
    """What the cache key records about the export (exporter, opset, torch version)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter should be one of {', '.join(EXPORTERS)} but is {exporter!r}")
    return f"{exporter}-op{OPSET}-torch{torch.__version__.split('+')[0]}"


class UNetGraph(torch.nn.Module):
    """``(latents, timesteps float32, text_embeds) -> eps``."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, timesteps, encoder_hidden_states=text_embeds, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """``images [-1,1] -> latents * scaling_factor`` (TAESD latents, or the KL VAE's mode)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        self.scale = vae_scaling_factor(vae)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return vae_encode(self.vae, images, self.scale)


class VaeDecoderGraph(torch.nn.Module):
    """``scaled latents -> images in [-1, 1]`` (not clamped: the pipeline clamps)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        self.scale = vae_scaling_factor(vae)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, latents, self.scale)


class ControlNetGraph(torch.nn.Module):
    """``(latents, timesteps, text_embeds, cond, scale (1,)) -> residuals`` (down..., mid), scaled."""

    def __init__(self, controlnet: Any) -> None:
        super().__init__()
        self.controlnet = controlnet

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor, cond: torch.Tensor,
                scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(controlnet_residuals(self.controlnet, latents, timesteps, text_embeds, cond, scale))


class UNetResidualGraph(torch.nn.Module):
    """``(latents, timesteps, text_embeds, res_0, ..., res_{m-1}) -> eps``."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                *residuals: torch.Tensor) -> torch.Tensor:
        return unet_with_residuals(self.unet, latents, timesteps, text_embeds, residuals)


class UNetControlGraph(torch.nn.Module):
    """``(latents, timesteps, text_embeds, cond_0, scale_0, cond_1, scale_1, ...) -> eps``: every
    ControlNet and the U-Net in one graph (their residuals add)."""

    def __init__(self, unet: Any, controlnets: list[Any]) -> None:
        super().__init__()
        self.unet = unet
        self.controlnets = torch.nn.ModuleList(controlnets)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                *control: torch.Tensor) -> torch.Tensor:
        residuals: list[torch.Tensor] | None = None
        for k, cn in enumerate(self.controlnets):
            r = controlnet_residuals(cn, latents, timesteps, text_embeds, control[2 * k], control[2 * k + 1])
            residuals = r if residuals is None else [a + b for a, b in zip(residuals, r, strict=True)]
        assert residuals is not None
        return unet_with_residuals(self.unet, latents, timesteps, text_embeds, residuals)


class TextEncoderGraph(torch.nn.Module):
    """``input_ids -> last hidden states`` (what Stable Diffusion conditions on)."""

    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


@dataclass(frozen=True)
class TemporalLayout:
    """What a temporal graph (``unet_tmp`` / ``unet_res_tmp``) is built for: the bank's built size,
    the stream rows it keeps rings for, the negative-text rows ahead of them in the U-Net batch,
    the latent grid and the number of ControlNet residual inputs."""

    max_frames: int
    rows: int
    uncond: int
    latent_hw: tuple[int, int]
    residuals: int = 0
    layers: int = 0


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: its component name and the static shape/dtype of every input."""

    component: str
    inputs: tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
    #: output names where they depend on the model (``controlnet``: one per residual)
    outputs: tuple[str, ...] = ()
    #: which ControlNet (``controlnet`` graphs)
    index: int = 0
    #: temporal graphs: the bank they carry
    temporal: TemporalLayout | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.component in IO_NAMES:
            return IO_NAMES[self.component][0]
        return tuple(name for name, _, _ in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.outputs or IO_NAMES[self.component][1]

    def example_inputs(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Deterministic, realistic example inputs (never zeros: they hide broken graphs)."""
        g = torch.Generator("cpu").manual_seed(seed)
        out: list[torch.Tensor] = []
        for name, shape, dt in self.inputs:
            if name == "timesteps":
                t = torch.linspace(999, 99, shape[0]).round()
            elif name == "input_ids":
                t = torch.randint(0, 400, shape, generator=g)
            elif name == "images":
                t = torch.rand(shape, generator=g) * 2 - 1
            elif name.startswith("cond"):
                t = torch.rand(shape, generator=g)
            elif name.startswith("scale"):
                t = torch.full(shape, 0.8)
            elif name.startswith("res_"):
                t = torch.randn(shape, generator=g) * 0.1
            elif name in ("attn_bias", "inj_bias"):  # the newest slot read, the others masked
                t = torch.full(shape, float("-inf"))
                t[0] = 0.0
            elif name == "inj_scale":
                t = torch.full(shape, 0.5)
            else:
                t = torch.randn(shape, generator=g)
            target = dt if name in ("timesteps", "input_ids") else dtype
            out.append(t.to(device=device, dtype=target))
        return tuple(out)


def text_shape(components: Any) -> tuple[int, int]:
    """(tokens, width) of the text conditioning, as :class:`stream_core.prompts.PromptEncoder` makes it."""
    length = int(getattr(components.tokenizer, "model_max_length", 77) or 77)
    if length > 512:
        length = 77
    dim = int(components.unet.config.cross_attention_dim)
    return length, dim


def graph_specs(components: Any, *, batch: int, frame_buffer: int, width: int, height: int) -> dict[str, GraphSpec]:
    """The four graphs for one stream configuration."""
    for name, v in (("batch", batch), ("frame_buffer", frame_buffer), ("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} should be a positive integer but is {v!r}")
    if width % 8 or height % 8:
        raise ValueError(f"width and height should be multiples of 8 but are {width}x{height}")
    h, w = height // 8, width // 8
    c = int(components.unet.config.in_channels)
    length, dim = text_shape(components)
    f32, i64 = torch.float32, torch.int64
    return {
        "unet": GraphSpec("unet", (("latents", (batch, c, h, w), f32), ("timesteps", (batch,), f32),
                                   ("text_embeds", (batch, length, dim), f32))),
        "vae_enc": GraphSpec("vae_enc", (("images", (frame_buffer, 3, height, width), f32),)),
        "vae_dec": GraphSpec("vae_dec", (("latents", (frame_buffer, c, h, w), f32),)),
        "text": GraphSpec("text", (("input_ids", (1, length), i64),)),
    }


def residual_shapes(controlnet: Any, *, width: int, height: int, text: tuple[int, int],
                    in_channels: int) -> list[tuple[int, ...]]:
    """Per-row shapes of a ControlNet's residuals at this image size (one call at batch 1)."""
    param = next(controlnet.parameters())
    dev, dt = param.device, param.dtype
    latents = torch.zeros((1, in_channels, height // 8, width // 8), device=dev, dtype=dt)
    with torch.no_grad():
        out = controlnet(latents, torch.ones((1,), device=dev), encoder_hidden_states=torch.zeros(
            (1, *text), device=dev, dtype=dt), controlnet_cond=torch.zeros((1, 3, height, width), device=dev, dtype=dt),
            return_dict=False)
    down, mid = out
    return [tuple(r.shape[1:]) for r in (*down, mid)]


def control_graph_specs(components: Any, *, batch: int, width: int, height: int,
                        fused: bool = False) -> dict[str, GraphSpec]:
    """``controlnet0``, ``controlnet1``, ... and ``unet_res`` for the components' ControlNets, or
    with ``fused`` the one ``unet_cn`` graph (empty without ControlNets)."""
    units = list(getattr(components, "controlnets", ()) or ())
    if not units:
        return {}
    h, w = height // 8, width // 8
    c = int(components.unet.config.in_channels)
    length, dim = text_shape(components)
    f32 = torch.float32
    base = (("latents", (batch, c, h, w), f32), ("timesteps", (batch,), f32), ("text_embeds", (batch, length, dim), f32))
    if fused:
        control = []
        for k in range(len(units)):
            control += [(f"cond_{k}", (batch, 3, height, width), f32), (f"scale_{k}", (1,), f32)]
        return {"unet_cn": GraphSpec("unet_cn", (*base, *control), ("eps",))}
    specs: dict[str, GraphSpec] = {}
    res_shapes: list[tuple[int, ...]] | None = None
    for k, unit in enumerate(units):
        shapes = residual_shapes(unit.model, width=width, height=height, text=(length, dim), in_channels=c)
        if res_shapes is not None and shapes != res_shapes:
            raise ValueError(f"ControlNet {k} makes residuals {shapes} but ControlNet 0 makes {res_shapes}")
        res_shapes = shapes
        names = tuple(f"res_{i}" for i in range(len(shapes)))
        specs[f"controlnet{k}"] = GraphSpec("controlnet", (*base, ("cond", (batch, 3, height, width), f32),
                                                           ("scale", (1,), f32)), names, k)
    assert res_shapes is not None
    specs["unet_res"] = GraphSpec("unet_res", (*base, *((f"res_{i}", (batch, *s), f32)
                                                        for i, s in enumerate(res_shapes))), ("eps",))
    return specs


def temporal_graph_specs(components: Any, *, batch: int, rows: int, width: int, height: int,
                         max_frames: int) -> dict[str, GraphSpec]:
    """``unet_tmp`` (and ``unet_res_tmp`` when the components have ControlNets: their residual
    graph) for a temporal bank of ``max_frames`` slots over ``rows`` stream rows; the U-Net batch
    ``batch`` holds ``batch - rows`` negative-text rows ahead of them (guidance full/initialize).
    The ring shapes come from a bank laid out over a weightless copy of the U-Net."""
    from stream_core.temporal import TemporalBank, check_max_frames, skeleton_unet

    if check_max_frames(max_frames) < 1:
        raise ValueError("a temporal graph needs max_frames >= 1")
    uncond = batch - rows
    if rows < 1 or uncond < 0:
        raise ValueError(f"a U-Net batch of {batch} cannot hold {rows} stream rows")
    h, w = height // 8, width // 8
    bank = TemporalBank(skeleton_unet(components.unet), rows, (h, w), max_frames, "meta", torch.float32, static=True)
    n = len(bank.names)
    f32 = torch.float32
    settings = (("attn_bias", (max_frames,), f32), ("inj_bias", (max_frames,), f32), ("inj_scale", (), f32))
    rings = [(f"bank_{kind}_{i}", tuple(store[i].shape), f32)
             for kind, store in (("k", bank.keys), ("v", bank.values), ("o", bank.outputs)) for i in range(n)]
    outputs = ("eps", *(f"new_{kind}_{i}" for kind in ("k", "v", "o") for i in range(n)))
    plain = graph_specs(components, batch=batch, frame_buffer=1, width=width, height=height)["unet"]
    layout = TemporalLayout(max_frames, rows, uncond, (h, w), 0, n)
    specs = {"unet_tmp": GraphSpec("unet_tmp", (*plain.inputs, *settings, *rings), outputs, temporal=layout)}
    res = control_graph_specs(components, batch=batch, width=width, height=height).get("unet_res")
    if res is not None:
        residuals = res.inputs[3:]
        specs["unet_res_tmp"] = GraphSpec("unet_res_tmp", (*plain.inputs, *settings, *residuals, *rings), outputs,
                                          temporal=dataclasses.replace(layout, residuals=len(residuals)))
    return specs


@contextlib.contextmanager
def _module_for(components: Any, spec: GraphSpec) -> Iterator[torch.nn.Module]:
    """The torch module a graph is exported from; a temporal graph's bank is installed in the
    U-Net for the duration (static mode) and taken out again after."""
    if spec.temporal is None:
        yield spec_module(components, spec)
        return
    from stream_core.temporal import TemporalBank, TemporalUNetGraph

    lay = spec.temporal
    param = next(components.unet.parameters())
    bank = TemporalBank(components.unet, lay.rows, lay.latent_hw, lay.max_frames, param.device, param.dtype,
                        static=True)
    try:
        if len(bank.names) != lay.layers:
            raise ValueError(f"{spec.component}: the U-Net has {len(bank.names)} self-attention layers, the graph "
                             f"spec {lay.layers}")
        yield TemporalUNetGraph(components.unet, bank, lay.uncond, lay.residuals).eval()
    finally:
        bank.uninstall()


def temporal_variants(spec: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """A temporal graph's example inputs under the settings it must reproduce: the cache read
    with injection (``example_inputs``), the cache off, and every slot read without injection."""
    if spec.temporal is None:
        return [("", inputs)]
    names = spec.input_names
    at = {name: names.index(name) for name in BANK_SETTINGS}

    def variant(bias: float, scale: float) -> tuple[torch.Tensor, ...]:
        out = list(inputs)
        out[at["attn_bias"]] = torch.full_like(inputs[at["attn_bias"]], bias)
        out[at["inj_bias"]] = torch.full_like(inputs[at["inj_bias"]], bias)
        out[at["inj_scale"]] = torch.full_like(inputs[at["inj_scale"]], scale)
        return tuple(out)

    return [("cache on, injection 0.5", inputs), ("cache off", variant(float("-inf"), 0.0)),
            ("every slot, no injection", variant(0.0, 0.0))]


def spec_module(components: Any, spec: GraphSpec) -> torch.nn.Module:
    """The torch module a graph is exported from (see :func:`graph_module`)."""
    if spec.component == "controlnet":
        return ControlNetGraph(components.controlnets[spec.index].model).eval()
    if spec.component == "unet_res":
        return UNetResidualGraph(components.unet).eval()
    if spec.component == "unet_cn":
        return UNetControlGraph(components.unet, [u.model for u in components.controlnets]).eval()
    return graph_module(components, spec.component)


def graph_module(components: Any, component: str) -> torch.nn.Module:
    if component == "unet":
        return UNetGraph(components.unet).eval()
    if component == "vae_enc":
        return VaeEncoderGraph(components.vae).eval()
    if component == "vae_dec":
        return VaeDecoderGraph(components.vae).eval()
    if component == "text":
        return TextEncoderGraph(components.text_encoder).eval()
    raise ValueError(f"unknown component {component!r}")


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporters print progress and warn about deprecations: keep them out of our logs."""
    sink = io.StringIO()
    noisy = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sink):
                yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def check_export_deps(exporter: str) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise missing_package("onnx", "ONNX export", exc) from None
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise missing_package("onnxscript", "ONNX export (dynamo exporter)", exc) from None


def export_onnx(
    components: Any,
    spec: GraphSpec,
    path: Path,
    *,
    exporter: str = "dynamo",
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """Export ``spec.component`` to ``path`` (static shapes, opset 18). Returns the files written.

    The module runs at its current device and dtype unless given; floating inputs follow the
    module's dtype except timesteps (always float32) and ids (int64).
    """
    check_export_deps(exporter)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with _module_for(components, spec) as module, torch.no_grad(), _quiet_export():
            param = next(module.parameters())
            device = device or param.device
            dtype = dtype or param.dtype
            args = spec.example_inputs(device, dtype)
            external = _param_bytes(module) > EXTERNAL_DATA_BYTES
            if exporter == "dynamo":
                torch.onnx.export(
                    module, args, str(path), input_names=list(spec.input_names),
                    output_names=list(spec.output_names), opset_version=OPSET, dynamo=True,
                    external_data=external, optimize=True, verbose=False,
                )
            elif exporter == "torchscript":
                torch.onnx.export(
                    module, args, str(path), input_names=list(spec.input_names),
                    output_names=list(spec.output_names), opset_version=OPSET, dynamo=False,
                    do_constant_folding=True,
                )
            else:
                raise ValueError(f"exporter should be one of {', '.join(EXPORTERS)} but is {exporter!r}")
    except ValueError:
        raise
    except Exception as exc:
        raise EngineBuildError(f"ONNX export of {spec.component} failed ({exporter} exporter): "
                               f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}") from exc
    files = sorted(p for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(path.name + "."))
    if path not in files:
        raise EngineBuildError(f"ONNX export of {spec.component} wrote no {path.name}")
    log.info("exported %s to ONNX (%s, opset %d) in %.1f s, %.1f MB", spec.component, exporter, OPSET,
             time.perf_counter() - t0, sum(p.stat().st_size for p in files) / 1e6)
    return files


def torch_reference(components: Any, spec: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The torch module's output for ``inputs`` (the reference an exported graph must match)."""
    with _module_for(components, spec) as module, torch.no_grad():
        return module(*inputs)


def compare(out: torch.Tensor, ref: torch.Tensor, *, rtol: float, atol: float, what: str) -> float:
    """Raise :class:`EngineVerifyError` unless ``max|out-ref| <= atol + rtol * max|ref|``."""
    out = out.detach().float().cpu()
    ref = ref.detach().float().cpu()
    if out.shape != ref.shape:
        raise EngineVerifyError(f"{what}: output shape {tuple(out.shape)} differs from torch's {tuple(ref.shape)}")
    if not torch.isfinite(out).all() and torch.isfinite(ref).all():
        raise EngineVerifyError(f"{what}: output has NaN/inf where torch's has none")
    err = float((out - ref).abs().max())
    scale = float(ref.abs().max())
    if err > atol + rtol * scale:
        raise EngineVerifyError(f"{what}: max abs error {err:.3g} vs torch (output scale {scale:.3g}); "
                                f"allowed {atol + rtol * scale:.3g}")
    return err
