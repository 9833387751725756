"""A :class:`~stream_core.runner.ModelRunner` over three compiled graphs (ONNX Runtime or TensorRT).

Each graph object owns static torch input/output buffers allocated once; a call copies its inputs
into them (which also converts dtypes: long timesteps become float32), runs, and the runner
returns a copy of the output so the caller owns its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class StaticGraph(Protocol):
    """One engine/session with fixed-shape named inputs and outputs held in torch tensors."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def copy_feeds(graph: StaticGraph, feeds: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``feeds`` into the graph's static input buffers, checking names and shapes."""
    if set(feeds) != set(graph.inputs):
        raise ValueError(f"{what}: inputs {sorted(feeds)} do not match the graph's {sorted(graph.inputs)}")
    for name, x in feeds.items():
        buf = graph.inputs[name]
        if tuple(x.shape) != tuple(buf.shape):
            raise ValueError(
                f"{what}: input '{name}' is shaped {tuple(x.shape)} but the engine was built for "
                f"{tuple(buf.shape)} (static shapes: a new size, steps, frame buffer or guidance mode "
                "needs its own engine)"
            )
        buf.copy_(x, non_blocking=buf.device.type == "cuda")


class GraphRunner:
    """U-Net, TAESD encoder and decoder as static graphs; implements ``ModelRunner``."""

    def __init__(self, unet: StaticGraph, encoder: StaticGraph, decoder: StaticGraph, *,
                 device: torch.device, dtype: torch.dtype, backend: str, info: dict[str, Any] | None = None,
                 controlnets: Sequence[StaticGraph] = (), unet_res: StaticGraph | None = None,
                 unet_cn: StaticGraph | None = None, controlnet_count: int | None = None) -> None:
        if controlnets and unet_res is None:
            raise ValueError("ControlNet graphs need the U-Net graph that takes their residuals (unet_res)")
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

    @property
    def graphs(self) -> dict[str, StaticGraph]:
        out = {"unet": self._unet, "vae_enc": self._enc, "vae_dec": self._dec}
        out.update({f"controlnet{k}": g for k, g in enumerate(self._cn)})
        if self._unet_res is not None:
            out["unet_res"] = self._unet_res
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
        return self._unet_res.run(feeds)["eps"].clone()

    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        out = self._unet.run({"latents": latents, "timesteps": timesteps, "text_embeds": text_embeds})
        return out["eps"].clone()

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
