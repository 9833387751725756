"""A :class:`~stream_core.runner.ModelRunner` over three compiled graphs (ONNX Runtime or TensorRT).

Each graph object owns static torch input/output buffers allocated once; a call copies its inputs
into them (which also converts dtypes: long timesteps become float32), runs, and the runner
returns a copy of the output so the caller owns its result.

With a temporal bank (``stream_core.temporal``) the U-Net graphs take the bank as inputs and give
the fresh keys/values/outputs as outputs (``unet_tmp``, ``unet_res_tmp``). The bank *adopts* the
graph's static input buffers as its rings and read settings (:meth:`GraphRunner.attach_temporal_bank`;
the residual graph is bound to the same buffers), so a U-Net call copies only latents, timesteps
and text: the bank writes its ring in place, where the graphs read it, and after each call the
graph's output buffers are handed to the bank as what the layers computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from stream_core.accel.export import BANK_SETTINGS


class StaticGraph(Protocol):
    """One engine/session with fixed-shape named inputs and outputs held in torch tensors."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def copy_feeds(graph: StaticGraph, feeds: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``feeds`` into the graph's static input buffers, checking names and shapes. Inputs the
    graph holds (``graph.held``: written in place by their owner, e.g. a temporal bank) are not fed."""
    held = getattr(graph, "held", set())
    if set(feeds) != set(graph.inputs) - held:
        extra = sorted(set(feeds) & held)
        why = f" ({', '.join(extra)} held in place, not fed)" if extra else ""
        raise ValueError(f"{what}: inputs {sorted(feeds)} do not match the graph's "
                         f"{sorted(set(graph.inputs) - held)}{why}")
    for name, x in feeds.items():
        buf = graph.inputs[name]
        if tuple(x.shape) != tuple(buf.shape):
            raise ValueError(
                f"{what}: input '{name}' is shaped {tuple(x.shape)} but the engine was built for "
                f"{tuple(buf.shape)} (static shapes: a new size, steps, frame buffer or guidance mode "
                "needs its own engine)"
            )
        buf.copy_(x, non_blocking=buf.device.type == "cuda")


def hold_input(graph: StaticGraph, name: str, tensor: torch.Tensor | None = None) -> None:
    """Stop feeding ``graph``'s input ``name`` per call: its buffer is written in place by its owner.
    With ``tensor``, the graph reads that tensor instead of its own buffer (same shape and dtype;
    the graph must support rebinding, ``bind_input``)."""
    buf = graph.inputs[name]
    if tensor is not None and tensor is not buf:
        if (tuple(tensor.shape), tensor.dtype, tensor.device) != (tuple(buf.shape), buf.dtype, buf.device):
            raise ValueError(f"input '{name}' is {tuple(buf.shape)} {buf.dtype} on {buf.device}; cannot bind "
                             f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}")
        bind = getattr(graph, "bind_input", None)
        if bind is None:
            raise ValueError(f"{type(graph).__name__} cannot bind its input '{name}' to another buffer")
        bind(name, tensor.contiguous())
    held = getattr(graph, "held", None)
    if held is None:
        held = set()
        graph.held = held  # type: ignore[attr-defined]
    held.add(name)


@dataclass(frozen=True)
class TemporalGraphs:
    """What the runner's U-Net graphs carry: a temporal bank of ``max_frames`` slots over ``rows``
    stream rows, ``uncond`` negative-text rows ahead of them in each call, ``layers`` self-attention
    layers; ``layout_unet`` is the module tree a bank lays its rings out over (a weightless copy)."""

    max_frames: int
    rows: int
    uncond: int
    layers: int
    layout_unet: Any


class GraphRunner:
    """U-Net, TAESD encoder and decoder as static graphs; implements ``ModelRunner``."""

    def __init__(self, unet: StaticGraph, encoder: StaticGraph, decoder: StaticGraph, *,
                 device: torch.device, dtype: torch.dtype, backend: str, info: dict[str, Any] | None = None,
                 controlnets: Sequence[StaticGraph] = (), unet_res: StaticGraph | None = None,
                 unet_cn: StaticGraph | None = None, controlnet_count: int | None = None,
                 temporal: TemporalGraphs | None = None) -> None:
        if controlnets and unet_res is None:
            raise ValueError("ControlNet graphs need the U-Net graph that takes their residuals (unet_res)")
        if temporal is not None and unet_cn is not None:
            raise ValueError("a temporal bank cannot ride in the single ControlNet + U-Net graph "
                             "(controlnet_graph: unet): use controlnet_graph: separate")
        self._unet = unet
        self._enc = encoder
        self._dec = decoder
        self._cn = list(controlnets)
        self._unet_res = unet_res
        self._unet_cn = unet_cn
        self._count = len(self._cn) if controlnet_count is None else int(controlnet_count)
        if unet_cn is not None:
            # every ControlNet inside the U-Net graph: the pipeline calls unet_controlled once
            self.unet_controlled = self._unet_controlled
            self._zero_cond: dict[int, torch.Tensor] = {}
            self._zero_scale = torch.zeros((1,), device=device, dtype=torch.float32)
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.info = dict(info or {})
        self._temporal = temporal
        self._bank: Any = None
        self._fresh: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        if temporal is not None:
            self._init_temporal_graphs(temporal)

    # ------------------------------------------------------------------ temporal bank
    def _bank_names(self) -> list[str]:
        n = self._temporal.layers if self._temporal is not None else 0
        return [*BANK_SETTINGS, *(f"bank_{kind}_{i}" for kind in ("k", "v", "o") for i in range(n))]

    def _temporal_graphs(self) -> list[StaticGraph]:
        return [g for g in (self._unet, self._unet_res) if g is not None]

    def _init_temporal_graphs(self, temporal: TemporalGraphs) -> None:
        """Check the graphs carry the bank; start every bank input masked (bank slots out of the
        softmax, injection 0: the plain attention) and hold it, the residual graph reading the
        U-Net graph's buffers; remember each graph's fresh key/value/output buffers."""
        names = self._bank_names()
        n = temporal.layers
        for graph in self._temporal_graphs():
            missing = [x for x in (*names, *(f"new_{k}_{i}" for k in "kvo" for i in range(n)))
                       if x not in graph.inputs and x not in graph.outputs]
            if missing:
                raise ValueError(f"the {self.backend} U-Net graph does not carry a temporal bank of {n} layers "
                                 f"(missing {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
            self._fresh[id(graph)] = [(graph.outputs[f"new_k_{i}"], graph.outputs[f"new_v_{i}"],
                                       graph.outputs[f"new_o_{i}"]) for i in range(n)]
        main = self._unet
        with torch.no_grad():
            main.inputs["attn_bias"].fill_(float("-inf"))
            main.inputs["inj_bias"].fill_(float("-inf"))
            main.inputs["inj_scale"].zero_()
            for name in names[len(BANK_SETTINGS):]:
                main.inputs[name].zero_()
        for name in names:
            hold_input(main, name)
            if self._unet_res is not None:
                hold_input(self._unet_res, name, main.inputs[name])

    def temporal_unet(self) -> Any:
        """The module tree a temporal bank lays its rings out over (a weightless copy of the U-Net:
        the U-Net itself runs as a graph that takes the bank as inputs)."""
        if self._temporal is None:
            raise ValueError(
                f"the {self.backend} U-Net graph was built without a temporal bank (temporal.max_frames 0 when "
                "the engines were made): start with temporal.max_frames set, which builds the graph that "
                "carries it (streambridge engines build --temporal-frames N), or set it to 0"
            )
        return self._temporal.layout_unet

    def attach_temporal_bank(self, bank: Any) -> None:
        """``bank`` (static mode, built over :meth:`temporal_unet`) adopts the U-Net graphs' bank
        input buffers as its rings and read settings (its contents copied in once): from now on the
        bank writes where the graphs read, and a U-Net call copies only latents, timesteps and text."""
        self.temporal_unet()
        t = self._temporal
        assert t is not None
        if bank.max_frames != t.max_frames:
            raise ValueError(f"temporal.max_frames is {bank.max_frames} but the {self.backend} U-Net graph was built "
                             f"for {t.max_frames} (the bank's size is a graph shape): build it with "
                             f"streambridge engines build --temporal-frames {bank.max_frames}")
        if bank.rows != t.rows or len(bank.names) != t.layers:
            raise ValueError(f"the temporal bank has {bank.rows} stream rows and {len(bank.names)} layers but the "
                             f"{self.backend} U-Net graph was built for {t.rows} and {t.layers}")
        if not bank.static:
            raise ValueError("a graph-carried temporal bank must run in static mode")
        ins = self._unet.inputs
        n = t.layers
        bank.adopt(ins["attn_bias"], ins["inj_bias"], ins["inj_scale"], [ins[f"bank_k_{i}"] for i in range(n)],
                   [ins[f"bank_v_{i}"] for i in range(n)], [ins[f"bank_o_{i}"] for i in range(n)])
        self._bank = bank

    def _run_unet(self, graph: StaticGraph, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """One U-Net graph call. With a temporal bank: inside a stream call of the bank the graph
        reads the bank in place and its fresh keys/values/outputs go to the bank; outside one (a
        warm-up) it runs with every bank slot masked, like the eager layers outside a bank call."""
        t = self._temporal
        if t is None:
            return graph.run(feeds)["eps"].clone()
        bank = self._bank
        call = None if bank is None else bank.current_call
        if call is None:
            ins = self._unet.inputs
            saved = [ins[name].clone() for name in BANK_SETTINGS]
            ins["attn_bias"].fill_(float("-inf"))
            ins["inj_bias"].fill_(float("-inf"))
            ins["inj_scale"].zero_()
            try:
                return graph.run(feeds)["eps"].clone()
            finally:
                for name, old in zip(BANK_SETTINGS, saved, strict=True):
                    ins[name].copy_(old)
        if call != (0, t.rows, t.uncond):
            raise RuntimeError(f"the {self.backend} U-Net graph carries the temporal bank for one call of all "
                               f"{t.rows} stream rows after {t.uncond} negative rows; the pipeline asked for rows "
                               f"{call[0]}..{call[0] + call[1]} after {call[2]} (sequential denoising is not "
                               "supported by the engine backends)")
        out = graph.run(feeds)
        bank.fresh[:] = self._fresh[id(graph)]
        return out["eps"].clone()

    @property
    def graphs(self) -> dict[str, StaticGraph]:
        """The graphs by component (``unet_tmp`` / ``unet_res_tmp`` when they carry a temporal bank)."""
        tmp = "_tmp" if self._temporal is not None else ""
        out = {f"unet{tmp}": self._unet, "vae_enc": self._enc, "vae_dec": self._dec}
        out.update({f"controlnet{k}": g for k, g in enumerate(self._cn)})
        if self._unet_res is not None:
            out[f"unet_res{tmp}"] = self._unet_res
        if self._unet_cn is not None:
            out["unet_cn"] = self._unet_cn
        return out

    @property
    def controlnet_count(self) -> int:
        return self._count

    def _unet_controlled(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                         conds: Sequence[torch.Tensor | None], scales: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """U-Net + every ControlNet in one graph; a None entry (inactive ControlNet) runs at scale 0."""
        assert self._unet_cn is not None
        feeds = {"latents": latents, "timesteps": timesteps, "text_embeds": text_embeds}
        for k, (cond, scale) in enumerate(zip(conds, scales, strict=True)):
            if cond is None or scale is None:
                zero = self._zero_cond.get(k)
                if zero is None:
                    zero = self._zero_cond[k] = torch.zeros_like(self._unet_cn.inputs[f"cond_{k}"])
                feeds[f"cond_{k}"], feeds[f"scale_{k}"] = zero, self._zero_scale
            else:
                feeds[f"cond_{k}"], feeds[f"scale_{k}"] = cond, scale.reshape(1)
        return self._unet_cn.run(feeds)["eps"].clone()

    def controlnet(self, index: int, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                   cond: torch.Tensor, scale: torch.Tensor) -> list[torch.Tensor]:
        graph = self._cn[index]
        out = graph.run({"latents": latents, "timesteps": timesteps, "text_embeds": text_embeds, "cond": cond,
                         "scale": scale.reshape(1)})
        return [out[f"res_{i}"].clone() for i in range(len(out))]

    def unet_residuals(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                       residuals: Sequence[torch.Tensor]) -> torch.Tensor:
        assert self._unet_res is not None
        feeds = {"latents": latents, "timesteps": timesteps, "text_embeds": text_embeds}
        feeds.update({f"res_{i}": r for i, r in enumerate(residuals)})
        return self._run_unet(self._unet_res, feeds)

    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self._run_unet(self._unet, {"latents": latents, "timesteps": timesteps, "text_embeds": text_embeds})

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._enc.run({"images": images})["latents"].clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._dec.run({"latents": latents})["images"].clone()


class _Config:
    def __init__(self, hidden_size: int) -> None:
        self.hidden_size = hidden_size


class GraphTextEncoder:
    """Drop-in for the CLIP text encoder inside :class:`stream_core.prompts.PromptEncoder`:
    ``encoder(ids) -> (hidden_states,)``, ``.config.hidden_size``, ``.parameters()``."""

    def __init__(self, graph: StaticGraph, *, device: torch.device, dtype: torch.dtype, hidden_size: int) -> None:
        self.graph = graph
        self.config = _Config(hidden_size)
        self._probe = torch.empty(0, device=device, dtype=dtype)

    def parameters(self) -> Any:
        return iter([self._probe])

    def __call__(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.graph.run({"input_ids": input_ids})["hidden_states"].clone(),)
