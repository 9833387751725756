"""The engine cache: content-keyed, integrity-checked, atomically written.

Layout (short names on purpose: Windows paths are limited to 260 characters)::

    <cache>/
      hashes.json                 memo of weight-file SHA-256s, keyed by (path, size, mtime)
      trt/  unet-<16 hex>.plan    TensorRT engines
            unet-<16 hex>.json    sidecar: key fields, key digest, SHA-256 and size of each file
      ort/  unet-<16 hex>.onnx    ONNX graphs for ONNX Runtime (+ .onnx.data for >1.5 GiB models)
            unet-<16 hex>.json
      <backend>/quarantine/       files that failed a check, moved aside with a reason file
      tmp/                        build scratch (same filesystem, so the final move is atomic)

The ``<16 hex>`` is the start of the SHA-256 of the key's canonical JSON; the sidecar holds the
whole digest and every field, and both are checked on load. A file is written to a temporary name,
fsynced and ``os.replace``-d into place; the sidecar is written last, so an engine without a
sidecar is an interrupted write. Anything corrupt, truncated or mismatched is moved to
``quarantine/`` and reported; it is never loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
BACKEND_DIRS: dict[str, str] = {"tensorrt": "trt", "onnxruntime": "ort"}
ENGINE_SUFFIX: dict[str, str] = {"tensorrt": ".plan", "onnxruntime": ".onnx"}
COMPONENTS: tuple[str, ...] = ("unet", "vae_enc", "vae_dec", "text")
#: graphs made only when ControlNets are configured: one per ControlNet, and the U-Net taking residuals
CONTROL_COMPONENTS: tuple[str, ...] = ("controlnet", "unet_res", "unet_cn")
#: U-Net graphs that carry a temporal bank (``stream_core.temporal``) as inputs and outputs
TEMPORAL_COMPONENTS: tuple[str, ...] = ("unet_tmp", "unet_res_tmp")
QUARANTINE = "quarantine"
_CHUNK = 4 << 20


def default_cache_dir() -> Path:
    """``$STREAMBRIDGE_CACHE`` or ``~/.cache/streambridge``."""
    env = os.environ.get("STREAMBRIDGE_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "streambridge"


# ---------------------------------------------------------------------------- file primitives
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_move(src: Path, dst: Path) -> None:
    """fsync ``src`` and move it over ``dst`` (same filesystem: the cache's ``tmp/``)."""
    with open(src, "rb+") as f:
        os.fsync(f.fileno())
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:  # another filesystem: copy to a temp name beside dst, then replace
        tmp = _tmp_name(dst)
        try:
            with open(src, "rb") as fi, open(tmp, "wb") as fo:
                shutil.copyfileobj(fi, fo, _CHUNK)
                fo.flush()
                os.fsync(fo.fileno())
            os.replace(tmp, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        src.unlink()
    _fsync_dir(dst.parent)


# ---------------------------------------------------------------------------- weight identity
class HashMemo:
    """SHA-256 of files, memoised by (resolved path, size, mtime_ns) in a JSON file.

    Hashing a 3 GB checkpoint takes seconds; with the memo a repeat start-up only stats it.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(raw, dict):
                    self._data = {k: v for k, v in raw.items() if isinstance(v, dict)}
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                log.warning("ignoring unreadable hash memo %s: %s", path, exc)

    def file_sha256(self, path: Path) -> str:
        p = path.resolve()
        st = p.stat()
        rec = self._data.get(str(p))
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return str(rec["sha256"])
        t0 = time.perf_counter()
        digest = sha256_file(p)
        dt = time.perf_counter() - t0
        if dt > 1.0:
            log.info("hashed %s (%.1f MB) in %.1f s", p.name, st.st_size / 1e6, dt)
        self._data[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self._dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        try:
            atomic_write_bytes(self.path, json.dumps(self._data, indent=1, sort_keys=True).encode())
            self._dirty = False
        except OSError as exc:  # a read-only cache still works, only slower next time
            log.warning("cannot save hash memo %s: %s", self.path, exc)


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in s


def hub_revision(repo_id: str) -> str | None:
    """The commit hash of the locally cached snapshot of ``repo_id``, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model_index.json", "config.json", "pytorch_lora_weights.safetensors"):
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:
            return None
        if isinstance(found, str):
            return Path(found).parent.name
    return None


def source_identity(source: str, memo: HashMemo) -> str:
    """Identity of a model/VAE/LoRA source: content hash for local files, revision for hub ids."""
    p = Path(source).expanduser()
    if p.is_file():
        return "sha256:" + memo.file_sha256(p)
    if p.is_dir():
        h = hashlib.sha256()
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise ValueError(f"model folder {p} holds no files")
        for f in files:
            h.update(f.relative_to(p).as_posix().encode())
            h.update(b"\0")
            h.update(memo.file_sha256(f).encode())
            h.update(b"\n")
        return "sha256:" + h.hexdigest()
    if _looks_like_hub_id(source):
        rev = hub_revision(source)
        if rev:
            return f"hub:{source}@{rev}"
        log.warning("no cached revision known for %s: its engines are keyed by name only", source)
        return f"hub:{source}"
    return f"name:{source}"


def module_identity(module: Any) -> str:
    """Content hash of an in-memory module's parameters and buffers (weights built in memory)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        flat = t.contiguous().view(-1)
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        h.update(flat.cpu().numpy().tobytes())
    return "params:" + h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What the weights are: base model, VAE and fused LoRAs (with their scales)."""

    model: str
    vae: str
    loras: tuple[tuple[str, float], ...] = ()
    #: the ControlNets' weights, in config order (empty without ControlNets)
    controlnets: tuple[str, ...] = ()


def controlnet_identity(unit: Any, memo: HashMemo) -> str:
    """Identity of a loaded ControlNet (``stream_core.controlnet.LoadedControlNet``)."""
    source = str(getattr(unit.spec, "model", "") or "")
    p = Path(source).expanduser()
    if p.exists() or _looks_like_hub_id(source):
        return source_identity(source, memo)
    return module_identity(unit.model)


def identify(components: Any, memo: HashMemo) -> ModelIdentity:
    """The :class:`ModelIdentity` of loaded ``Components`` (``stream_core.models``).

    Uses ``components.info`` (``model``, ``vae``, ``lcm_lora``, ``loras``) written by
    ``load_components``; components built in memory (no ``model`` in ``info``) are identified by
    a hash of their parameters.
    """
    info = dict(getattr(components, "info", {}) or {})
    model_src = info.get("model")
    if model_src:
        model = source_identity(str(model_src), memo)
    else:
        h = hashlib.sha256()
        for mod in (components.unet, components.text_encoder):
            h.update(module_identity(mod).encode())
        model = "params:" + h.hexdigest()
    vae_src = info.get("vae")
    vae = source_identity(str(vae_src), memo) if vae_src else module_identity(components.vae)
    loras: list[tuple[str, float]] = []
    if info.get("lcm_lora"):
        loras.append((source_identity(str(info["lcm_lora"]), memo), 1.0))
    for src, scale in info.get("loras") or ():
        loras.append((source_identity(str(src), memo), float(scale)))
    controlnets = tuple(controlnet_identity(u, memo) for u in getattr(components, "controlnets", ()) or ())
    memo.save()
    return ModelIdentity(model=model, vae=vae, loras=tuple(loras), controlnets=controlnets)


# ---------------------------------------------------------------------------- the key
@dataclass(frozen=True)
class EngineKey:
    """Everything that changes an engine. Fields that do not apply to a component are ``None``.

    The U-Net key carries its static batch and the parts that make it (steps ``n``, frame buffer
    ``f``, guidance mode); the VAE keys carry the frame batch ``f`` and the resolution; the text
    encoder's carries the token length. ``runtime`` is the TensorRT or ONNX Runtime version,
    ``device`` the GPU compute capability (``sm89``) or ``cpu``, ``exporter`` the ONNX exporter,
    opset and torch version.
    """

    backend: str
    component: str
    model: str
    vae: str
    loras: tuple[tuple[str, float], ...]
    precision: str
    runtime: str
    device: str
    exporter: str
    width: int | None = None
    height: int | None = None
    batch: int | None = None
    steps: int | None = None
    frame_buffer: int | None = None
    cfg_type: str | None = None
    text_len: int | None = None
    text_dim: int | None = None
    #: ``controlnet`` graphs: the ControlNet's weights (left out of the digest when None, so
    #: keys without ControlNets are what they always were)
    controlnet: str | None = None
    #: ``unet_tmp`` / ``unet_res_tmp`` graphs: the temporal bank's built size (``max_frames``),
    #: which sets the shapes of its ring inputs (left out of the digest when None)
    temporal_frames: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_DIRS:
            raise ValueError(f"backend should be one of {', '.join(BACKEND_DIRS)} but is {self.backend!r}")
        known = COMPONENTS + CONTROL_COMPONENTS + TEMPORAL_COMPONENTS
        if self.component not in known:
            raise ValueError(f"component should be one of {', '.join(known)} but is {self.component!r}")
        if self.component in ("controlnet", "unet_cn") and self.controlnet is None:
            raise ValueError(f"a {self.component} key names its ControlNets' weights")
        if self.component in TEMPORAL_COMPONENTS and not self.temporal_frames:
            raise ValueError(f"a {self.component} key names the temporal bank's built size (temporal_frames)")

    def fields(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loras"] = [[s, float(w)] for s, w in self.loras]
        for optional in ("controlnet", "temporal_frames"):
            if d[optional] is None:
                del d[optional]
        return d

    def digest(self) -> str:
        return _digest_fields(self.fields())

    @property
    def stem(self) -> str:
        return f"{self.component}-{self.digest()[:16]}"

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> EngineKey:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown key fields {sorted(unknown)}")
        kw = dict(d)
        kw["loras"] = tuple((str(s), float(w)) for s, w in kw.get("loras") or ())
        return cls(**kw)


def _digest_fields(fields: Mapping[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------- the cache
@dataclass
class CachedEngine:
    """A verified cache entry: ``main`` is the engine/graph file, ``files`` all of its files."""

    key: EngineKey
    main: Path
    files: list[Path]
    sidecar: dict[str, Any]


@dataclass
class Lookup:
    entry: CachedEngine | None
    problem: str | None = None  # set when something was found but failed a check (quarantined)


@dataclass
class EntryStatus:
    """One sidecar (or orphan file) as seen by ``list``/``verify``."""

    backend: str
    stem: str
    ok: bool
    reason: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    created: str = ""
    files: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class EngineCache:
    """Engines and ONNX graphs under one folder (see the module docstring for the layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    # -- paths
    def backend_dir(self, backend: str) -> Path:
        try:
            return self.root / BACKEND_DIRS[backend]
        except KeyError:
            raise ValueError(f"no cache folder for backend {backend!r}") from None

    def quarantine_dir(self, backend: str) -> Path:
        return self.backend_dir(backend) / QUARANTINE

    def memo(self) -> HashMemo:
        return HashMemo(self.root / "hashes.json")

    def scratch(self) -> Path:
        """A fresh folder under ``tmp/`` for a build; the caller removes it."""
        d = self.root / "tmp" / uuid.uuid4().hex[:12]
        d.mkdir(parents=True, exist_ok=False)
        return d

    def main_path(self, key: EngineKey) -> Path:
        return self.backend_dir(key.backend) / (key.stem + ENGINE_SUFFIX[key.backend])

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.backend_dir(key.backend) / (key.stem + ".json")

    def _files_of_stem(self, folder: Path, stem: str) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(stem + ".") and p.suffix != ".tmp")

    # -- quarantine
    def quarantine(self, backend: str, paths: Iterable[Path], reason: str) -> list[Path]:
        """Move ``paths`` into ``<backend>/quarantine/`` with a ``.reason.txt`` beside them."""
        qdir = self.quarantine_dir(backend)
        qdir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved: list[Path] = []
        for p in paths:
            if not p.exists():
                continue
            dst = qdir / f"{p.name}.{stamp}"
            n = 1
            while dst.exists():
                dst = qdir / f"{p.name}.{stamp}.{n}"
                n += 1
            os.replace(p, dst)
            moved.append(dst)
        if moved:
            note = qdir / f"{moved[0].name}.reason.txt"
            atomic_write_bytes(note, (reason + "\n" + "\n".join(m.name for m in moved) + "\n").encode())
            log.error("quarantined %s: %s", ", ".join(m.name for m in moved), reason)
        return moved

    # -- checks
    def _check_sidecar(self, folder: Path, stem: str, expected: EngineKey | None) -> tuple[dict[str, Any] | None, str | None]:
        side = folder / (stem + ".json")
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"unreadable sidecar {side.name}: {exc}"
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            return None, f"sidecar {side.name} has an unknown format"
        fields_ = data.get("key")
        if not isinstance(fields_, dict):
            return None, f"sidecar {side.name} has no key"
        digest = _digest_fields(fields_)
        if data.get("key_digest") != digest:
            return None, f"sidecar {side.name}: key fields do not match the recorded key digest (edited?)"
        if not stem.endswith("-" + digest[:16]):
            return None, f"{stem}: file name does not match its key (renamed or copied from another key)"
        if expected is not None and digest != expected.digest():
            return None, f"{stem}: built for a different configuration than asked for (key mismatch)"
        files = data.get("files")
        if not isinstance(files, dict) or not files or data.get("main") not in files:
            return None, f"sidecar {side.name} lists no engine file"
        for name, rec in files.items():
            p = folder / name
            if not p.is_file():
                return None, f"{name} is missing"
            size = p.stat().st_size
            if size != rec.get("size"):
                return None, f"{name} is {size} bytes, expected {rec.get('size')} (truncated or overwritten)"
            if sha256_file(p) != rec.get("sha256"):
                return None, f"{name}: SHA-256 mismatch (corrupt)"
        return data, None

    def lookup(self, key: EngineKey) -> Lookup:
        """Find and fully verify the entry for ``key``. Bad entries are quarantined."""
        folder = self.backend_dir(key.backend)
        stem = key.stem
        present = self._files_of_stem(folder, stem)
        side = folder / (stem + ".json")
        if not present:
            return Lookup(None)
        if not side.exists():
            reason = f"{stem}: engine file without sidecar (interrupted write)"
            self.quarantine(key.backend, present, reason)
            return Lookup(None, reason)
        data, problem = self._check_sidecar(folder, stem, key)
        if problem is not None or data is None:
            reason = problem or "unknown problem"
            self.quarantine(key.backend, present, reason)
            return Lookup(None, reason)
        listed = [folder / n for n in data["files"]]
        return Lookup(CachedEngine(key, folder / data["main"], listed, data))

    # -- writing
    def store(self, key: EngineKey, files: Mapping[str, Path], *, main: str, extra: Mapping[str, Any] | None = None) -> CachedEngine:
        """Move built ``files`` (final name -> path in a scratch folder) into place, sidecar last."""
        folder = self.backend_dir(key.backend)
        folder.mkdir(parents=True, exist_ok=True)
        if main not in files:
            raise ValueError(f"main file {main!r} is not among {sorted(files)}")
        for name in files:
            if not name.startswith(key.stem + "."):
                raise ValueError(f"cache file {name!r} must start with {key.stem + '.'!r}")
        # an older entry of the same key goes first (it may have other files)
        stale = self._files_of_stem(folder, key.stem)
        for p in stale:
            p.unlink()
        records: dict[str, dict[str, Any]] = {}
        for name, src in files.items():
            records[name] = {"sha256": sha256_file(src), "size": src.stat().st_size}
            atomic_move(src, folder / name)
        sidecar = {
            "format": SIDECAR_FORMAT,
            "key": key.fields(),
            "key_digest": key.digest(),
            "main": main,
            "files": records,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if extra:
            sidecar["info"] = dict(extra)
        atomic_write_bytes(folder / (key.stem + ".json"), json.dumps(sidecar, indent=1, sort_keys=True).encode())
        return CachedEngine(key, folder / main, [folder / n for n in files], sidecar)

    # -- listing and verifying
    def _stems(self, backend: str) -> tuple[list[str], list[Path]]:
        folder = self.backend_dir(backend)
        if not folder.is_dir():
            return [], []
        stems = sorted(p.stem for p in folder.glob("*.json") if p.is_file())
        listed = set(stems)
        orphans = [
            p
            for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix not in (".json", ".tmp") and not p.name.startswith(".")
            and p.name.split(".", 1)[0] not in listed
        ]
        return stems, orphans

    def entries(self, backend: str | None = None, *, verify: bool = False) -> list[EntryStatus]:
        """Every entry with its key fields; ``verify`` hashes the files (no quarantine here)."""
        out: list[EntryStatus] = []
        for be in [backend] if backend else list(BACKEND_DIRS):
            folder = self.backend_dir(be)
            stems, orphans = self._stems(be)
            for stem in stems:
                st = EntryStatus(backend=be, stem=stem, ok=True)
                try:
                    data = json.loads((folder / (stem + ".json")).read_text(encoding="utf-8"))
                    st.fields = dict(data.get("key") or {})
                    st.created = str(data.get("created", ""))
                    st.info = dict(data.get("info") or {})
                    st.files = sorted((data.get("files") or {}).keys())
                    st.size = sum(int(r.get("size", 0)) for r in (data.get("files") or {}).values())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
                    st.ok, st.reason = False, f"unreadable sidecar: {exc}"
                if verify and st.ok:
                    _, problem = self._check_sidecar(folder, stem, None)
                    if problem:
                        st.ok, st.reason = False, problem
                out.append(st)
            for p in orphans:
                out.append(EntryStatus(backend=be, stem=p.name, ok=False, reason="file without sidecar",
                                       size=p.stat().st_size, files=[p.name]))
        return out

    def verify_all(self, backend: str | None = None) -> list[EntryStatus]:
        """Hash-check every entry; quarantine each bad one. Returns the statuses."""
        results = self.entries(backend, verify=True)
        for st in results:
            if st.ok:
                continue
            folder = self.backend_dir(st.backend)
            if st.reason == "file without sidecar":
                paths = [folder / st.stem]
            else:
                paths = self._files_of_stem(folder, st.stem)
            self.quarantine(st.backend, paths, st.reason)
        return results
