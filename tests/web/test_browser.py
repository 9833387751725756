"""The control page in headless Chromium against a running daemon (tiny model, pattern source):
what a VJ does with it, checked against what the daemon applies and echoes over real OSC."""

from __future__ import annotations

import re
import socket
import time

import pytest

from bridge.control.codec import encode_message
from bridge.params import PARAMS
from tests.daemon.conftest import wait_until

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright: pip install -e "
                             "'.[test]'").expect
expect.set_options(timeout=10_000)  # a loaded 2-core CI machine: generous, never a timing claim
NUMERIC = [name for name, spec in PARAMS.items() if spec.kind in (int, float)]


@pytest.fixture(scope="module")
def page(browser, web_daemon):
    """The control page, open for the whole module; console errors and page errors recorded."""
    p = browser.new_page()
    p.set_default_timeout(15_000)
    p.problems = []
    p.on("console", lambda m: p.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    p.on("pageerror", lambda e: p.problems.append(f"page error: {e}"))
    p.goto(web_daemon.status_page.url + "control")
    p.wait_for_selector("body[data-ready='1']", timeout=15_000)
    yield p
    p.close()


def send_osc(daemon, address: str, *args) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(encode_message(address, *args), daemon.osc.address)


def fader(page, name: str):
    return page.locator(f".param[data-name='{name}']")


def test_the_page_loads_with_every_parameter_and_no_console_error(page, web_daemon):
    for name in NUMERIC:  # a fader for every numeric parameter, from the table
        assert fader(page, name).locator("input[type=range]").count() == 1, name
    assert page.locator("input[type=range]").count() == len(NUMERIC)
    assert page.locator("#preset-grid button").count() == len(web_daemon.presets.names())
    expect(page.locator("#output")).to_have_attribute("src", re.compile(r"/output\.jpg"), timeout=10_000)
    expect(page.locator("#link")).to_have_text("connected")
    time.sleep(1.5)  # a few figures events
    assert page.evaluate("state.history.length") >= 2
    assert page.problems == []


def test_moving_a_fader_changes_the_daemons_value(page, web_daemon, web_feedback):
    web_feedback.clear()
    slider = fader(page, "strength").locator("input[type=range]")
    number = fader(page, "strength").locator("input[type=number]")
    before = number.input_value()
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2)  # a real click on the track
    expect(number).not_to_have_value(before)
    shown = float(fader(page, "strength").locator("input[type=number]").input_value())
    assert 0.7 < shown < 0.9
    echoed = web_feedback.wait_for("/sd/strength", lambda a: abs(a[0] - shown) < 1e-4)  # real OSC feedback
    assert abs(echoed[0] - shown) < 1e-4
    assert web_daemon.controller.values["strength"] == pytest.approx(shown)


def test_an_osc_change_moves_the_fader(page, web_daemon):
    send_osc(web_daemon, "/sd/guidance", 3.5)
    number = fader(page, "guidance").locator("input[type=number]")
    expect(number).to_have_value("3.5")
    assert fader(page, "guidance").locator("input[type=range]").input_value() == "700"  # 3.5 on its 0..5 range
    send_osc(web_daemon, "/sd/prompt", "a lighthouse in fog")
    expect(fader(page, "prompt").locator("textarea")).to_have_value("a lighthouse in fog")


def test_a_refused_value_shows_its_reason_and_changes_nothing(page, web_daemon, web_feedback):
    web_feedback.clear()
    before = web_daemon.controller.values["guidance"]
    number = fader(page, "guidance").locator("input[type=number]")
    number.fill("25")
    number.press("Enter")
    error = fader(page, "guidance").locator(".err")
    error.wait_for(state="visible", timeout=5_000)
    assert error.text_content() == "25.0 is outside 0..20"
    assert web_feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/guidance")[1] == "25.0 is outside 0..20"
    assert web_daemon.controller.values["guidance"] == before
    expect(number).to_have_value(f"{before:g}")  # the box shows the live value again


def test_bypass_and_dry_wet(page, web_daemon, web_feedback):
    toggle = fader(page, "bypass").locator("button")
    toggle.click()
    assert wait_until(lambda: web_daemon._bypass, 5)
    expect(toggle).to_have_text("on")
    toggle.click()
    assert wait_until(lambda: not web_daemon._bypass, 5)
    send_osc(web_daemon, "/sd/mix", 0.25)
    expect(fader(page, "mix").locator("input[type=range]")).to_have_value("250")


def test_prompts_crossfaders_and_seeds_from_the_page(page, web_daemon, web_feedback):
    web_feedback.clear()
    field = fader(page, "prompt_b").locator("input[type=text]")
    field.fill("a field of sunflowers")
    field.press("Enter")
    web_feedback.wait_for("/sd/prompt/b", lambda a: a[0] == "a field of sunflowers")
    fader(page, "prompt_mix").locator("input[type=range]").press("End")  # the keyboard moves faders too
    web_feedback.wait_for("/sd/prompt/mix", lambda a: a[0] == 1.0)
    seed = fader(page, "seed_b").locator("input[type=number]")
    seed.fill("1234")
    seed.press("Enter")
    web_feedback.wait_for("/sd/seed/b", lambda a: a[0] == 1234)
    fader(page, "seed_mix").locator("input[type=range]").press("Home")
    for _ in range(250):  # 250 of 1000 steps: a quarter of the way (the echoes must not pull it back)
        fader(page, "seed_mix").locator("input[type=range]").press("ArrowRight")
    web_feedback.wait_for("/sd/seed/mix", lambda a: abs(a[0] - 0.25) < 1e-6)
    assert wait_until(lambda: web_daemon.controller.values["seed_mix"] == 0.25, 5)
    assert web_daemon.controller.values["prompt_b"] == "a field of sunflowers"
    assert web_daemon.controller.values["seed_b"] == 1234 and web_daemon.controller.values["prompt_mix"] == 1.0


def test_the_preset_grid_recalls(page, web_daemon, web_feedback):
    web_feedback.clear()
    page.locator("#preset-grid button[data-preset='glitch-chrome']").click()  # transition 0.5 s
    web_feedback.wait_for("/sd/status/preset", lambda a: a[0] == "glitch-chrome")
    page.locator("#preset-grid button.on[data-preset='glitch-chrome']").wait_for(timeout=5_000)
    assert wait_until(lambda: web_daemon.controller.values["strength"] == 0.7, 5)
    expect(fader(page, "strength").locator("input[type=number]")).to_have_value("0.7")
    assert page.locator("#preset-now").text_content() == "preset: glitch-chrome"
    names = web_daemon.presets.names()
    page.locator("#next").click()
    following = names[(names.index("glitch-chrome") + 1) % len(names)]
    web_feedback.wait_for("/sd/status/preset", lambda a: a[0] == following)


def test_save_asks_before_replacing_a_preset(page, web_daemon, web_presets):
    target = web_presets / "ink-wash.yaml"
    original = target.read_text()
    page.locator("#save-name").fill("ink-wash")
    page.locator("#save-form button[type=submit]").click()
    page.locator("#save-confirm").wait_for(state="visible")
    assert "exists" in page.locator("#save-question").text_content()
    page.locator("#save-cancel").click()
    time.sleep(0.5)
    assert target.read_text() == original  # not replaced unasked
    page.locator("#save-form button[type=submit]").click()
    page.locator("#save-overwrite").click()
    assert wait_until(lambda: target.read_text() != original, 5)
    page.locator("#save-name").fill("from-the-page")
    page.locator("#save-form button[type=submit]").click()
    page.locator("#preset-grid button[data-preset='from-the-page']").wait_for(timeout=10_000)  # hot reload shows it
    assert (web_presets / "from-the-page.yaml").exists()


def test_tap_tempo_and_the_bar_from_the_page(page, web_daemon):
    """Four taps half a second apart set about 120 BPM (the daemon's clock), the BPM fader follows, and
    the tempo line and the bar's dots show the clock the daemon reports."""
    tempo = web_daemon.tempo
    send_osc(web_daemon, "/sd/tempo/bpm", 90.0)
    expect(fader(page, "bpm").locator("input[type=number]")).to_have_value("90", timeout=10_000)
    t0 = time.monotonic()
    for k in range(4):
        while time.monotonic() < t0 + 0.5 * k:
            time.sleep(0.005)
        page.click("#tap")
    # 120 BPM give or take what a loaded machine adds to a click's way (never a timing claim)
    assert wait_until(lambda: 100.0 < tempo.bpm < 145.0, 5), tempo.bpm
    expect(fader(page, "bpm").locator("input[type=number]")).to_have_value(re.compile(r"^1[0-4]\d"), timeout=10_000)
    expect(page.locator("#tempo-now")).to_contain_text("BPM", timeout=10_000)
    expect(page.locator("#tempo-now")).to_contain_text("internal clock")
    assert page.locator("#beat-dots .dot").count() == tempo.beats_per_bar
    assert page.locator("#beat-dots .dot.on").count() == 1
    assert not [p for p in page.problems if "page error" in p]


def test_the_status_page_reads_well_and_links_the_control_page(browser, web_daemon):
    p = browser.new_page()
    problems: list[str] = []
    p.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: problems.append(str(e)))
    try:
        p.goto(web_daemon.status_page.url)
        p.locator("#rates td.k", has_text="Processed fps").wait_for(timeout=10_000)
        assert "frames the model finished per second" in p.locator("#rates").text_content()
        assert p.locator("#sinks th", has_text="Frames sent").count() == 1
        assert p.locator("#control-link").is_visible()
        assert problems == []
    finally:
        p.close()
