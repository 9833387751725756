"""Where a model's weights are on this machine: a local folder or the local Hugging Face cache.

Lookups only (no network, no torch import), shared by the loader and the start-up checks, so
both give the same answer and the same advice.
"""

from __future__ import annotations

from pathlib import Path

TAESD_ID = "madebyollin/taesd"
LCM_LORA_SD15 = "latent-consistency/lcm-lora-sdv1-5"


def looks_like_hub_id(s: str) -> bool:
    """``org/name`` (exactly one slash, no dot-leading part, no backslash)."""
    parts = s.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in s


def how_to_provide(name: str) -> str:
    """The one message for weights that are not here: how to get them, without the network at
    show time."""
    return (
        f"'{name}' is not on this machine. Download it ahead of the show with "
        f"`streambridge models fetch {name}` (on another machine, then copy its Hugging Face cache, "
        f"HF_HOME, default ~/.cache/huggingface), or pass a local diffusers-format folder "
        f"(--model /path/to/folder). For a demo without weights: `streambridge models make-tiny DIR`."
    )


def cached_file(repo_id: str, filename: str) -> Path | None:
    """``filename`` of hub repo ``repo_id`` in the local Hugging Face cache, or None. Never goes
    online."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # diffusers depends on it; without it nothing can be cached
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id the hub library refuses is simply not cached
        return None
    return Path(found) if isinstance(found, str) else None


def locate(name: str, marker: str = "model_index.json") -> Path | None:
    """The folder holding ``name``'s files: ``name`` itself when it is an existing folder with
    ``marker``, else its snapshot in the local cache when ``marker`` is cached there."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path if (path / marker).is_file() else None
    if not looks_like_hub_id(name):
        return None
    found = cached_file(name, marker)
    return found.parent if found is not None else None
