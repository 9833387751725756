"""PresetStore: loading a folder, index recall, hot reload, atomic and safe saving."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bridge.presets import Preset, PresetStore, load_preset_file
from bridge.yamlio import ConfigError

from .conftest import SHIPPED, wait_for


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def rename_save(folder: Path, name: str, text: str) -> None:
    """Save the way editors do: write a temporary file, then rename it over the original."""
    tmp = folder / f".{name}.swp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, folder / name)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "presets"
    d.mkdir()
    return d


class Recorder:
    """Collects on_change calls from the watcher thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Preset], list[str], dict[str, str]]] = []
        self.lock = threading.Lock()

    def __call__(self, changed: dict[str, Preset], removed: list[str], errors: dict[str, str]) -> None:
        with self.lock:
            self.calls.append((changed, removed, errors))

    def count(self) -> int:
        with self.lock:
            return len(self.calls)

    def last(self) -> tuple[dict[str, Preset], list[str], dict[str, str]]:
        with self.lock:
            return self.calls[-1]


# ---------------------------------------------------------------- loading and recall


def test_loads_shipped_folder() -> None:
    store = PresetStore(SHIPPED)
    assert store.errors() == {}
    assert len(store.names()) >= 6
    for name in store.names():
        assert store.get(name) == load_preset_file(store.path_of(name))


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PresetStore(tmp_path / "nope")


def test_names_sorted_case_insensitively_and_index_recall(folder: Path) -> None:
    for name in ["beta", "Alpha", "gamma", "alpha2"]:
        write(folder, f"{name}.yaml", f"prompt: {name}\n")
    write(folder, "notes.txt", "not a preset")
    write(folder, ".hidden.yaml", "prompt: hidden\n")
    store = PresetStore(folder)
    assert store.names() == ["Alpha", "alpha2", "beta", "gamma"]
    assert store.by_index(0) == ("Alpha", Preset(prompt="Alpha"))
    assert store.name_at(3) == "gamma"
    assert store.by_index(4) is None and store.by_index(-1) is None
    assert store.get("missing") is None


def test_step_wraps_both_ways(folder: Path) -> None:
    for name in ["a", "b", "c"]:
        write(folder, f"{name}.yaml", "strength: 0.5\n")
    store = PresetStore(folder)
    assert store.step("a", +1) == "b"
    assert store.step("c", +1) == "a"
    assert store.step("a", -1) == "c"
    assert store.step(None, +1) == "a"
    assert store.step(None, -1) == "c"
    assert store.step("bb", +1) == "c"  # a name that is gone: continue from where it sorted
    assert store.step("bb", -1) == "b"


def test_step_on_empty_folder(folder: Path) -> None:
    store = PresetStore(folder)
    assert store.step(None, 1) is None and store.names() == []


def test_yml_and_duplicates(folder: Path) -> None:
    write(folder, "one.yml", "prompt: from yml\n")
    write(folder, "two.yaml", "prompt: from yaml\n")
    write(folder, "two.yml", "prompt: ignored\n")
    store = PresetStore(folder)
    assert store.get("one") == Preset(prompt="from yml")
    assert store.get("two") == Preset(prompt="from yaml")
    assert "duplicate" in store.errors()["two"]
    (folder / "two.yml").unlink()
    changes = store.reload()
    assert changes.changed == {} and store.errors() == {}
    write(folder, "two.yml", "prompt: now used\n")
    (folder / "two.yaml").unlink()
    changes = store.reload()
    assert changes.changed == {"two": Preset(prompt="now used")} and changes.removed == []


def test_broken_and_badly_named_files_are_reported_not_loaded(folder: Path) -> None:
    write(folder, "good.yaml", "prompt: ok\n")
    write(folder, "bad.yaml", "prompt: ok\nstrenght: 0.5\n")
    write(folder, "has space.yaml", "prompt: ok\n")
    store = PresetStore(folder)
    assert store.names() == ["good"]
    errors = store.errors()
    assert "bad.yaml:2: key 'strenght'" in errors["bad"]
    assert "not a valid preset name" in errors["has space"]


# ---------------------------------------------------------------- hot reload


def test_hot_reload_add_edit_break_remove(folder: Path) -> None:
    write(folder, "keep.yaml", "prompt: unchanged\n")
    store = PresetStore(folder)
    rec = Recorder()
    store.start_watching(rec)
    try:
        # add
        t0 = time.monotonic()
        write(folder, "live.yaml", "prompt: first\nstrength: 0.4\n")
        assert wait_for(lambda: rec.count() == 1, timeout=2.0)
        assert time.monotonic() - t0 < 1.5
        changed, removed, errors = rec.last()
        assert changed == {"live": Preset(prompt="first", strength=0.4)} and removed == [] and errors == {}
        assert store.get("live") == Preset(prompt="first", strength=0.4)

        # edit by rename (how editors save)
        rename_save(folder, "live.yaml", "prompt: second\nstrength: 0.4\n")
        assert wait_for(lambda: rec.count() == 2, timeout=2.0)
        assert rec.last()[0] == {"live": Preset(prompt="second", strength=0.4)}

        # break it: the previous version stays active and the error is reported
        rename_save(folder, "live.yaml", "prompt: third\nstrength: 7\n")
        assert wait_for(lambda: rec.count() == 3, timeout=2.0)
        changed, removed, errors = rec.last()
        assert changed == {} and removed == []
        assert "live.yaml:2: key 'strength'" in errors["live"]
        assert store.get("live") == Preset(prompt="second", strength=0.4)
        assert "live" in store.errors()

        # fix it
        rename_save(folder, "live.yaml", "prompt: fourth\n")
        assert wait_for(lambda: rec.count() == 4, timeout=2.0)
        assert rec.last()[0] == {"live": Preset(prompt="fourth")}
        assert store.errors() == {}

        # remove it
        (folder / "live.yaml").unlink()
        assert wait_for(lambda: rec.count() == 5, timeout=2.0)
        assert rec.last() == ({}, ["live"], {})
        assert store.get("live") is None and store.names() == ["keep"]
    finally:
        store.stop()
    assert store.get("keep") == Preset(prompt="unchanged")


def test_burst_of_writes_is_debounced_into_one_change(folder: Path) -> None:
    store = PresetStore(folder)
    rec = Recorder()
    store.start_watching(rec)
    try:
        for i in range(8):  # faster than the debounce: a half-written file is never reported
            write(folder, "burst.yaml", f"seed: {i}\n")
            time.sleep(0.05)
        assert wait_for(lambda: rec.count() >= 1, timeout=2.0)
        time.sleep(0.6)
        assert rec.count() == 1
        assert rec.last()[0] == {"burst": Preset(seed=7)}
    finally:
        store.stop()


def test_touch_without_change_is_not_reported(folder: Path) -> None:
    path = write(folder, "same.yaml", "seed: 1\n")
    store = PresetStore(folder)
    rec = Recorder()
    store.start_watching(rec)
    try:
        rename_save(folder, "same.yaml", "seed: 1\n")
        os.utime(path, None)
        time.sleep(1.0)
        assert rec.count() == 0
    finally:
        store.stop()


def test_callback_error_does_not_stop_the_watcher(folder: Path) -> None:
    store = PresetStore(folder)
    calls: list[str] = []

    def boom(changed, removed, errors):
        calls.extend(changed)
        raise RuntimeError("listener bug")

    store.start_watching(boom)
    try:
        write(folder, "a.yaml", "seed: 1\n")
        assert wait_for(lambda: calls == ["a"], timeout=2.0)
        write(folder, "b.yaml", "seed: 2\n")
        assert wait_for(lambda: calls == ["a", "b"], timeout=2.0)
    finally:
        store.stop()


def test_stop_returns_promptly(folder: Path) -> None:
    store = PresetStore(folder)
    store.start_watching(lambda *a: None)
    t0 = time.monotonic()
    store.stop()
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(RuntimeError):
        store.start_watching(lambda *a: None)
        store.start_watching(lambda *a: None)
    store.stop()


def test_reads_during_reloads_are_consistent(folder: Path) -> None:
    for i in range(20):
        write(folder, f"p{i:02d}.yaml", f"seed: {i}\n")
    store = PresetStore(folder)
    stop = threading.Event()
    failures: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            items = store.items()
            if [n for n, _ in items] != store.names() and len(items) == 20:
                failures.append("names out of step")
            for name, preset in items:
                i = int(name[1:])
                if preset.seed not in (i, 100 + i):
                    failures.append(name)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(20):
            rename_save(folder, f"p{i:02d}.yaml", f"seed: {100 + i}\n")
            store.reload()
    finally:
        stop.set()
        t.join()
    assert failures == []
    assert [store.get(f"p{i:02d}").seed for i in range(20)] == [100 + i for i in range(20)]


def test_truncated_file_keeps_the_previous_version(folder: Path) -> None:
    path = write(folder, "t.yaml", "seed: 5\n")
    store = PresetStore(folder)
    path.write_text("")  # a non-atomic writer caught between truncate and write
    changes = store.reload()
    assert "empty" in changes.errors["t"]
    assert store.get("t") == Preset(seed=5)


# ---------------------------------------------------------------- saving


def test_save_round_trip(folder: Path) -> None:
    store = PresetStore(folder)
    preset = Preset(
        description="saved live",
        prompt="a red fox: in snow",
        negative_prompt="",
        prompt_mix=0.25,
        strength=0.5,
        guidance=1.2,
        seed=42,
        transition=2.5,
    )
    path = store.save("fox_1", preset)
    assert path == folder.resolve() / "fox_1.yaml"
    assert load_preset_file(path) == preset
    assert store.reload().changed == {"fox_1": preset}
    assert store.get("fox_1") == preset
    assert [p.name for p in folder.iterdir()] == ["fox_1.yaml"]  # no temp files left behind


def test_save_overwrites_atomically_and_is_picked_up_by_watcher(folder: Path) -> None:
    store = PresetStore(folder)
    store.save("look", Preset(seed=1))
    store.reload()
    rec = Recorder()
    store.start_watching(rec)
    try:
        store.save("look", Preset(seed=2))
        assert wait_for(lambda: rec.count() == 1, timeout=2.0)
        assert rec.last()[0] == {"look": Preset(seed=2)}
    finally:
        store.stop()


def test_save_keeps_an_existing_yml_file(folder: Path) -> None:
    write(folder, "old.yml", "seed: 1\n")
    store = PresetStore(folder)
    path = store.save("old", Preset(seed=9))
    assert path.name == "old.yml"
    assert store.reload().changed == {"old": Preset(seed=9)}


BAD_NAMES = ["../x", "..", ".", "a/b", "a\\b", "nul\x00", "x" * 65, "", "name\n", " a", "a.b", "é", "/etc/passwd"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused_before_touching_disk(tmp_path: Path, folder: Path, name: str) -> None:
    canary = tmp_path / "x.yaml"
    canary.write_text("canary\n")
    (tmp_path / "x").write_text("canary\n")
    store = PresetStore(folder)
    with pytest.raises(ValueError, match="invalid preset name"):
        store.save(name, Preset(seed=1))
    assert canary.read_text() == "canary\n" and (tmp_path / "x").read_text() == "canary\n"
    assert list(folder.iterdir()) == []


def test_symlink_pointing_outside_is_refused(tmp_path: Path, folder: Path) -> None:
    canary = tmp_path / "outside.yaml"
    canary.write_text("canary\n")
    (folder / "evil.yaml").symlink_to(canary)
    store = PresetStore(folder)
    with pytest.raises(ValueError, match="refusing"):
        store.save("evil", Preset(seed=1))
    assert canary.read_text() == "canary\n"
    assert (folder / "evil.yaml").is_symlink()


def test_longest_name_and_con_are_fine_on_linux(folder: Path) -> None:
    store = PresetStore(folder)
    if os.name == "nt":
        pytest.skip("CON is reserved on Windows")
    for name in ["x" * 64, "CON", "a-b_C-9"]:
        store.save(name, Preset(seed=3))
    assert store.reload().changed.keys() == {"x" * 64, "CON", "a-b_C-9"}
