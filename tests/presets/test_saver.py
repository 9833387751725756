"""Preset saves: no silent overwrite (shipped presets included), a cap on the count, coalesced
and rate-limited writes on their own thread, and everything pending written on close."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import yaml

from bridge.presets import Preset, PresetExistsError, PresetLimitError, PresetSaver, PresetStore
from tests.presets.conftest import SHIPPED, wait_for


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    for f in SHIPPED.glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    return folder


class Errors:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, address: str, reason: str) -> None:
        with self._lock:
            self.items.append((address, reason))


def test_store_save_refuses_to_overwrite_unless_asked(shipped_copy: Path) -> None:
    store = PresetStore(shipped_copy)
    before = (shipped_copy / "neon-city.yaml").read_text()
    with pytest.raises(PresetExistsError, match="neon-city"):
        store.save("neon-city", Preset(seed=1), overwrite=False)
    assert (shipped_copy / "neon-city.yaml").read_text() == before
    store.save("neon-city", Preset(seed=1), overwrite=True)
    assert yaml.safe_load((shipped_copy / "neon-city.yaml").read_text()) == {"seed": 1}


def test_store_save_refuses_a_new_preset_past_the_cap(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"p{i}.yaml").write_text(f"seed: {i}\n")
    store = PresetStore(tmp_path)
    with pytest.raises(PresetLimitError, match="3 presets"):
        store.save("p3", Preset(seed=3), max_count=3)
    assert not (tmp_path / "p3.yaml").exists()
    store.save("p1", Preset(seed=7), overwrite=True, max_count=3)  # replacing one is fine
    assert yaml.safe_load((tmp_path / "p1.yaml").read_text()) == {"seed": 7}


def test_saver_refusal_names_the_preset_and_how_to_overwrite(shipped_copy: Path) -> None:
    errors = Errors()
    saver = PresetSaver(PresetStore(shipped_copy), on_error=errors, min_interval=0.0)
    before = (shipped_copy / "neon-city.yaml").read_text()
    assert saver.submit("neon-city", Preset(seed=5)) is None  # accepted; refused when written
    saver.close()
    assert (shipped_copy / "neon-city.yaml").read_text() == before
    assert errors.items == [("/sd/preset/save", errors.items[0][1])]
    reason = errors.items[0][1]
    assert "neon-city" in reason and "/sd/preset/save neon-city 1" in reason
    assert saver.stats()["failed"] == 1 and saver.stats()["written"] == 0


def test_saver_writes_off_the_calling_thread(tmp_path: Path) -> None:
    store = PresetStore(tmp_path)
    threads: list[str] = []
    real = store.save

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    store.save = spy  # type: ignore[method-assign]
    saver = PresetSaver(store, min_interval=0.0)
    saver.submit("look", Preset(seed=1))
    assert wait_for(lambda: (tmp_path / "look.yaml").exists())
    saver.close()
    assert threads == ["preset-save"]


def test_500_saves_of_one_name_write_a_handful_of_files(tmp_path: Path) -> None:
    store = PresetStore(tmp_path)
    writes: list[int] = []
    real = store.save

    def count(name, preset, **kwargs):
        writes.append(preset.seed)
        return real(name, preset, **kwargs)

    store.save = count  # type: ignore[method-assign]
    saver = PresetSaver(store, min_interval=0.2)
    for i in range(500):
        assert saver.submit("look", Preset(seed=i), overwrite=True) is None
    saver.close()
    assert 1 <= len(writes) <= 3, writes
    assert writes[-1] == 499  # the latest state wins
    assert yaml.safe_load((tmp_path / "look.yaml").read_text()) == {"seed": 499}
    stats = saver.stats()
    assert stats["accepted"] == 500 and stats["written"] == len(writes)
    assert stats["superseded"] == 500 - len(writes)


def test_many_names_at_once_are_bounded_and_every_one_accounted_for(tmp_path: Path) -> None:
    errors = Errors()
    saver = PresetSaver(PresetStore(tmp_path), on_error=errors, max_pending=16, min_interval=10.0)
    results = [saver.submit(f"look{i}", Preset(seed=i)) for i in range(500)]
    refused = [i for i, r in enumerate(results) if r is not None]
    saver.close()  # writes everything pending at once, whatever the interval
    written = {p.stem for p in tmp_path.glob("*.yaml")}
    accepted = {f"look{i}" for i, r in enumerate(results) if r is None}
    assert written == accepted and 16 <= len(written) <= 17  # the one being written + 16 waiting
    assert len(refused) == 500 - len(written) == len(errors.items)
    assert all("already waiting" in reason for _, reason in errors.items)
    assert saver.submit("late", Preset(seed=1)) is not None  # closed: refused, not lost


def test_close_writes_everything_pending_at_once(tmp_path: Path) -> None:
    saver = PresetSaver(PresetStore(tmp_path), min_interval=30.0)
    for i in range(5):
        saver.submit(f"n{i}", Preset(seed=i))
    saver.close(timeout=5.0)
    assert sorted(p.stem for p in tmp_path.glob("*.yaml")) == [f"n{i}" for i in range(5)]
