"""The engine cache: keys, identities, atomic writes, integrity checks and quarantine."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from stream_core.accel import cache as cache_mod
from stream_core.accel.cache import (
    EngineCache,
    EngineKey,
    HashMemo,
    ModelIdentity,
    identify,
    source_identity,
)

BASE = EngineKey(
    backend="tensorrt", component="unet", model="sha256:aa", vae="sha256:bb", loras=(("sha256:cc", 0.8),),
    precision="fp16", runtime="trt-10.9.0", device="sm89", exporter="dynamo-op18-torch2.13.0",
    width=512, height=512, batch=2, steps=2, frame_buffer=1, cfg_type="self", text_len=77, text_dim=1024,
)

CHANGES = {
    "backend": "onnxruntime",
    "component": "vae_dec",
    "model": "sha256:a2",
    "vae": "sha256:b2",
    "loras": (("sha256:cc", 0.9),),  # same LoRA, another scale
    "precision": "fp32",
    "runtime": "trt-10.10.0",
    "device": "sm90",
    "exporter": "torchscript-op18-torch2.13.0",
    "width": 768,
    "height": 384,
    "batch": 4,
    "steps": 3,
    "frame_buffer": 2,
    "cfg_type": "none",
    "text_len": 76,
    "text_dim": 768,
    "controlnet": "sha256:cn",
    "temporal_frames": 2,
}


def test_every_field_is_covered():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_key_changes_when_any_part_changes(field):
    other = dataclasses.replace(BASE, **{field: CHANGES[field]})
    assert other.digest() != BASE.digest()
    assert other.stem != BASE.stem


def test_key_is_stable_and_round_trips():
    assert BASE.digest() == dataclasses.replace(BASE).digest()
    assert EngineKey.from_fields(json.loads(json.dumps(BASE.fields()))) == BASE
    assert len(BASE.stem) <= len("vae_enc-") + 16  # short names (Windows paths)
    extra_lora = dataclasses.replace(BASE, loras=(*BASE.loras, ("sha256:dd", 1.0)))
    assert extra_lora.digest() != BASE.digest()


def test_vae_key_ignores_unet_only_parts():
    from stream_core.accel.engines import EngineTarget, StreamShape, engine_key

    ident = ModelIdentity("sha256:aa", "sha256:bb")
    tgt = EngineTarget("onnxruntime", "ort-1", "cpu", "fp32", "cpu")
    a = StreamShape.for_stream(64, 64, 2, 1, "self")
    b = StreamShape.for_stream(64, 64, 3, 1, "full")
    assert engine_key(ident, tgt, "vae_dec", a, (77, 32), "dynamo") == engine_key(ident, tgt, "vae_dec", b, (77, 32), "dynamo")
    assert engine_key(ident, tgt, "unet", a, (77, 32), "dynamo") != engine_key(ident, tgt, "unet", b, (77, 32), "dynamo")
    c = StreamShape.for_stream(64, 64, 2, 2, "self")
    assert engine_key(ident, tgt, "vae_dec", a, (77, 32), "dynamo") != engine_key(ident, tgt, "vae_dec", c, (77, 32), "dynamo")


def test_engine_descriptions_name_each_shape_part_once():
    from stream_core.accel.engines import EngineTarget, StreamShape, _describe, engine_key

    ident = ModelIdentity("sha256:aa", "sha256:bb")
    tgt = EngineTarget("onnxruntime", "ort-1", "cpu", "fp32", "cpu")
    shape = StreamShape.for_stream(64, 64, 2, 1, "self")
    unet = _describe(engine_key(ident, tgt, "unet", shape, (77, 32), "dynamo"))
    assert unet == "unet, 64x64, batch 2 (steps 2, frame buffer 1, cfg self), fp32"
    tmp = _describe(engine_key(ident, tgt, "unet_tmp", shape, (77, 32), "dynamo", temporal_frames=3))
    assert tmp.count("frame buffer") == 1 and "temporal bank of 3 frame(s)" in tmp
    assert _describe(engine_key(ident, tgt, "vae_dec", shape, (77, 32), "dynamo")) == "vae_dec, 64x64, frame buffer 1, fp32"


def test_model_identity_follows_weight_content_and_is_memoised(tiny_model_dir, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    memo = HashMemo(tmp_path / "hashes.json")
    first = source_identity(str(model), memo)
    memo.save()
    calls = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    memo2 = HashMemo(tmp_path / "hashes.json")
    assert source_identity(str(model), memo2) == first
    assert calls == []  # unchanged files: only stat(), no hashing
    weights = next((model / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert source_identity(str(model), memo2) != first
    assert calls == [weights.resolve()]  # only the changed file was hashed again


def test_identify_components_and_hub_ids(tiny_components, tmp_path):
    memo = HashMemo(None)
    ident = identify(tiny_components, memo)
    assert ident.model.startswith("sha256:") and ident.loras == ()
    assert source_identity("someorg/some-model", memo) == "hub:someorg/some-model"  # nothing cached offline
    assert source_identity("not a path or id", memo) == "name:not a path or id"


# ---------------------------------------------------------------------------- store / lookup
def _key(**kw):
    return dataclasses.replace(BASE, backend="onnxruntime", **kw)


def _store(cache: EngineCache, key: EngineKey, payload: bytes = b"engine-bytes" * 100):
    scratch = cache.scratch()
    main = scratch / (key.stem + ".onnx")
    main.write_bytes(payload)
    entry = cache.store(key, {main.name: main}, main=main.name)
    shutil.rmtree(scratch)
    return entry


def test_store_then_lookup(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    entry = _store(cache, key)
    assert entry.main.read_bytes().startswith(b"engine-bytes")
    found = cache.lookup(key)
    assert found.entry is not None and found.problem is None and found.entry.main == entry.main
    side = json.loads(cache.sidecar_path(key).read_text())
    assert side["key"] == key.fields() and side["key_digest"] == key.digest()
    assert side["files"][entry.main.name]["sha256"] == cache_mod.sha256_file(entry.main)
    assert not [p for p in cache.backend_dir("onnxruntime").iterdir() if p.name.endswith(".tmp")]
    assert cache.lookup(_key(width=256)).entry is None  # other key: plain miss, nothing quarantined


def _quarantined(cache, backend="onnxruntime"):
    q = cache.quarantine_dir(backend)
    return sorted(p.name for p in q.iterdir()) if q.is_dir() else []


def _corrupt(entry):
    data = bytearray(entry.main.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.main.write_bytes(bytes(data))


def _truncate(entry):
    entry.main.write_bytes(entry.main.read_bytes()[:100])


def _orphan(entry):
    entry.main.with_suffix(".json").unlink()


def _edit_sidecar(entry):
    side = entry.main.with_suffix(".json")
    data = json.loads(side.read_text())
    data["key"]["width"] = 1024  # claims another configuration
    side.write_text(json.dumps(data))


def _bad_json(entry):
    entry.main.with_suffix(".json").write_text("{not json")


@pytest.mark.parametrize("damage,reason", [
    (_corrupt, "SHA-256 mismatch"),
    (_truncate, "truncated"),
    (_orphan, "without sidecar"),
    (_edit_sidecar, "key digest"),
    (_bad_json, "unreadable sidecar"),
])
def test_damaged_entries_are_detected_and_quarantined(tmp_path, damage, reason):
    cache = EngineCache(tmp_path)
    key = _key()
    entry = _store(cache, key)
    damage(entry)
    found = cache.lookup(key)
    assert found.entry is None
    assert reason in found.problem
    assert not entry.main.exists()  # never left where it could be loaded
    q = _quarantined(cache)
    assert any(n.startswith(entry.main.name) for n in q)
    assert any(n.endswith(".reason.txt") for n in q)
    assert cache.lookup(key).entry is None and cache.lookup(key).problem is None  # now a plain miss


def test_entry_of_another_key_is_a_key_mismatch(tmp_path):
    """An engine+sidecar copied in under another key's name is refused (and quarantined)."""
    cache = EngineCache(tmp_path)
    key, other = _key(), _key(batch=8)
    entry = _store(cache, other)
    folder = cache.backend_dir("onnxruntime")
    shutil.copy(entry.main, folder / (key.stem + ".onnx"))
    shutil.copy(entry.main.with_suffix(".json"), folder / (key.stem + ".json"))
    found = cache.lookup(key)
    assert found.entry is None and "does not match its key" in found.problem
    assert cache.lookup(other).entry is not None  # the genuine one is untouched


def test_verify_all_reports_and_quarantines(tmp_path):
    cache = EngineCache(tmp_path)
    good = _store(cache, _key())
    bad = _store(cache, _key(width=256))
    _corrupt(bad)
    (cache.backend_dir("onnxruntime") / "unet-0123456789abcdef.onnx").write_bytes(b"stray")
    results = cache.verify_all()
    assert {r.stem: r.ok for r in results} == {good.main.stem: True, bad.main.stem: False,
                                                 "unet-0123456789abcdef.onnx": False}
    assert good.main.exists() and not bad.main.exists()
    assert all(r.ok for r in cache.verify_all())


def test_store_replaces_an_older_entry_atomically(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    _store(cache, key, b"old" * 50)
    entry = _store(cache, key, b"new" * 60)
    assert entry.main.read_bytes() == b"new" * 60
    assert cache.lookup(key).entry is not None
