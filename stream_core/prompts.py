"""Text conditioning: prompt -> CLIP hidden states, as Stable Diffusion pipelines compute them."""

from __future__ import annotations

from typing import Any

import torch


class PromptEncoder:
    """Encodes one prompt to ``(1, max_length, dim)`` with the model's tokenizer and text encoder.

    Pure compute: caching, debouncing and threads are the caller's business (the daemon runs this
    off the render thread).
    """

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        param = next(text_encoder.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.max_length = int(getattr(tokenizer, "model_max_length", 77) or 77)
        if self.max_length > 512:  # some tokenizers report a huge sentinel
            self.max_length = 77

    @torch.inference_mode()
    def encode(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"prompt should be a string, got {type(text).__name__}")
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    @property
    def embed_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)
