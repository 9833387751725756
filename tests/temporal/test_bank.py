"""The cached-attention bank: off changes nothing, the extended attention and feature injection
equal an independent computation, each stream row reads the bank of its own stage, the ring
refreshes every ``interval`` frames and resets with the stream, live settings act on the next frame."""

from __future__ import annotations

import math

import pytest
import torch

from stream_core.pipeline import RebuildRequired
from tests.temporal.conftest import SIZE, clip


def run(pipe, frames: range) -> list[torch.Tensor]:
    return [pipe(clip(k)) for k in frames]


# ---------------------------------------------------------------------------------------------- off
@pytest.mark.parametrize("cfg", ["none", "self", "full", "initialize"])
def test_cache_off_is_bit_identical_to_no_bank(make, cfg):
    plain = make(cfg)
    banked = make(cfg, temporal_max_frames=2, temporal_cache=False)
    assert plain.temporal is None and banked.temporal is not None
    for k in range(5):
        x = clip(k)
        assert torch.equal(plain(x), banked(x)), f"frame {k}"


def test_static_off_equals_no_bank_to_float_rounding_and_on_differs(make):
    plain = make()
    static_off = make(temporal_max_frames=3, temporal_cache=False, temporal_static=True)
    on = make(temporal_max_frames=3)
    diffs = []
    for k in range(5):
        x = clip(k)
        ref = plain(x)
        torch.testing.assert_close(static_off(x), ref, rtol=0, atol=1e-6)
        diffs.append((on(x) - ref).abs().max().item())
    assert diffs[0] == 0.0  # the first frame fills the bank and reads nothing
    assert max(diffs[1:]) > 0.0  # afterwards the cache takes part


def test_feedback_zero_is_bit_identical_and_nonzero_changes_the_input(make):
    plain = make()
    fb = make(latent_feedback=0.0)
    for k in range(3):
        assert torch.equal(plain(clip(k)), fb(clip(k)))
    fb.set_latent_feedback(0.5)
    # the new input latent of frame 3 leaves the stream n - 1 = 2 calls later
    same = [torch.equal(plain(clip(k)), fb(clip(k))) for k in range(3, 6)]
    assert same == [True, True, False]


# ---------------------------------------------------------------------------------------------- reference maths
def reference_attention(attn, hidden, bank_k, bank_v, slots):
    """softmax(q [k; bank] ^T / sqrt(d)) [v; bank] per row and head, written out plainly."""
    q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    heads = attn.heads
    d = q.shape[-1] // heads
    rows = []
    for r in range(hidden.shape[0]):
        keys = torch.cat([k[r]] + [bank_k[r][s] for s in slots])
        vals = torch.cat([v[r]] + [bank_v[r][s] for s in slots])
        per_head = []
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            w = torch.softmax(q[r][:, sl] @ keys[:, sl].T / math.sqrt(d), dim=-1)
            per_head.append(w @ vals[:, sl])
        rows.append(torch.cat(per_head, dim=-1))
    return attn.to_out[0](torch.stack(rows))


def reference_injection(out, bank_o, slots, s):
    res = []
    for r in range(out.shape[0]):
        cached = torch.cat([bank_o[r][j] for j in slots])
        sim = torch.nn.functional.normalize(out[r], dim=-1) @ torch.nn.functional.normalize(cached, dim=-1).T
        nearest = cached[sim.argmax(dim=-1)]
        res.append(out[r] + s * (nearest - out[r]))
    return torch.stack(res)


def filled_bank(make, frames=2, static=False, **kw):
    """A pipeline's bank with every row's ring filled with different random keys/values/outputs;
    slot 1 is the newest (write pointer at 0)."""
    pipe = make(temporal_max_frames=2, temporal_frames=frames, temporal_static=static, **kw)
    bank = pipe.temporal
    g = torch.Generator().manual_seed(7)
    for store in (bank.keys, bank.values, bank.outputs):
        for t in store:
            t.copy_(torch.randn(t.shape, generator=g))
    bank._fill = False
    bank._ptr.fill_(0)
    return pipe, bank


def layer(pipe, bank, i=0):
    name = bank.names[i][: -len(".processor")]
    return dict(pipe.runner.unet_model.named_modules())[name]


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("frames,slots", [(2, [0, 1]), (1, [1])])
@torch.no_grad()
def test_one_layer_equals_reference_extended_attention(make, static, frames, slots):
    pipe, bank = filled_bank(make, frames, static)
    attn = layer(pipe, bank)
    t = bank.keys[0].shape[2]
    hidden = torch.randn((3, t, attn.to_q.in_features), generator=torch.Generator().manual_seed(1))
    bank.begin_frame()
    bank.begin_call(0, 3, 0)
    got = attn(hidden)
    want = reference_attention(attn, hidden, bank.keys[0], bank.values[0], slots)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the same layer without the bank is a different result (the bank took part)
    assert (got - reference_attention(attn, hidden, bank.keys[0], bank.values[0], [])).abs().max() > 1e-3
    # and it recorded this call's own keys, values and (raw) output for the ring
    k, v, o = bank.fresh[0]
    torch.testing.assert_close(k, attn.to_k(hidden))
    torch.testing.assert_close(o, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("static", [False, True])
@torch.no_grad()
def test_one_layer_feature_injection_equals_reference(make, static):
    pipe, bank = filled_bank(make, 2, static, temporal_injection=0.7)
    attn = layer(pipe, bank)
    t = bank.keys[0].shape[2]
    hidden = torch.randn((3, t, attn.to_q.in_features), generator=torch.Generator().manual_seed(2))
    bank.begin_frame()
    bank.begin_call(0, 3, 0)
    got = attn(hidden)
    raw = reference_attention(attn, hidden, bank.keys[0], bank.values[0], [0, 1])
    want = reference_injection(raw, bank.outputs[0], [0, 1], 0.7)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # frames 1: only the newest slot (1) is searched
    bank.set_frames(1)
    bank.begin_frame()
    bank.begin_call(0, 3, 0)
    want1 = reference_injection(reference_attention(attn, hidden, bank.keys[0], bank.values[0], [1]),
                                bank.outputs[0], [1], 0.7)
    torch.testing.assert_close(attn(hidden), want1, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- rows <-> stages
@torch.no_grad()
def test_each_row_reads_the_bank_of_its_own_stage(make):
    pipe, bank = filled_bank(make)
    attn = layer(pipe, bank)
    t = bank.keys[0].shape[2]
    hidden = torch.randn((1, t, attn.to_q.in_features), generator=torch.Generator().manual_seed(3)).expand(3, -1, -1)
    bank.begin_frame()
    bank.begin_call(0, 3, 0)
    got = attn(hidden.contiguous())
    # the same input in every row: the rows differ only through their own banks
    assert (got[0] - got[1]).abs().max() > 1e-3 and (got[1] - got[2]).abs().max() > 1e-3
    for r in range(3):
        own = reference_attention(attn, hidden[r : r + 1], bank.keys[0][r : r + 1], bank.values[0][r : r + 1], [0, 1])
        torch.testing.assert_close(got[r : r + 1], own, rtol=1e-4, atol=1e-5)
    # a bank shared by every row (row 0's) is a different result for rows 1 and 2
    shared = reference_attention(attn, hidden, bank.keys[0][:1].expand(3, -1, -1, -1),
                                 bank.values[0][:1].expand(3, -1, -1, -1), [0, 1])
    assert (got[1:] - shared[1:]).abs().max() > 1e-3


@torch.no_grad()
def test_negative_text_rows_read_the_bank_of_the_stage_they_guide(make):
    pipe, bank = filled_bank(make, cfg="initialize")
    attn = layer(pipe, bank)
    t = bank.keys[0].shape[2]
    hidden = torch.randn((4, t, attn.to_q.in_features), generator=torch.Generator().manual_seed(4))
    bank.begin_frame()
    bank.begin_call(0, 3, 1)  # initialize: one negative row for stage 0, then stages 0, 1, 2
    got = attn(hidden)
    rows = [0, 0, 1, 2]
    want = reference_attention(attn, hidden, bank.keys[0][rows], bank.values[0][rows], [0, 1])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert bank.fresh[0][0].shape[0] == 4  # recorded for the whole batch; end_call keeps the last 3


@torch.no_grad()
def test_stream_writes_each_stage_into_its_own_ring_row(make):
    pipe = make(temporal_max_frames=2)
    bank = pipe.temporal
    attn = layer(pipe, bank, 0)
    seen = []
    hook = attn.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    pipe(clip(0))  # fills: 3 calls of the priming, every slot
    seen.clear()
    pipe(clip(1))  # writes slot 1 (the pointer moved there after the fill)
    hook.remove()
    (hidden,) = seen
    k = attn.to_k(hidden)
    torch.testing.assert_close(bank.keys[0][:, 1], k)  # row i (stage i) <- the U-Net's row i
    assert not torch.equal(bank.keys[0][:, 0], bank.keys[0][:, 1])
    assert int(bank._ptr) == 0


# ---------------------------------------------------------------------------------------------- ring
def test_ring_fills_on_the_first_frame_refreshes_every_interval_and_resets_with_the_stream(make):
    pipe = make(temporal_max_frames=3, temporal_interval=2)
    bank = pipe.temporal
    pipe(clip(0))
    first = bank.keys[0].clone()
    assert all(torch.equal(first[:, 0], first[:, j]) for j in (1, 2))  # every slot holds the first frame
    assert int(bank._ptr) == 1
    ptrs = []
    for k in range(1, 6):
        pipe(clip(k))
        ptrs.append(int(bank._ptr))
    assert ptrs == [1, 2, 2, 0, 0]  # frames 1, 3, 5 (count 1, 3, 5 odd) skip; 2, 4 write
    pipe.set_temporal_interval(1)
    pipe(clip(6))
    assert int(bank._ptr) == 1
    pipe.reset()
    pipe(clip(7))
    after = bank.keys[0]
    assert all(torch.equal(after[:, 0], after[:, j]) for j in (1, 2))
    assert not torch.equal(after, first)
    assert int(bank._ptr) == 1


# ---------------------------------------------------------------------------------------------- live
@pytest.mark.parametrize("change,first_changed", [
    (lambda p: p.set_temporal_cache(False), 0),  # every stage's attention, the next call
    (lambda p: p.set_temporal_frames(1), 0),
    (lambda p: p.set_temporal_injection(0.8), 0),
    (lambda p: p.set_latent_feedback(0.4), 2),  # the next frame's input, out after n - 1 calls
])
def test_live_settings_act_on_the_next_frame(make, change, first_changed):
    a = make(temporal_max_frames=3)
    b = make(temporal_max_frames=3)
    for k in range(4):
        assert torch.equal(a(clip(k)), b(clip(k)))
    shapes = [t.shape for t in a.temporal.keys]
    change(a)
    same = [torch.equal(a(clip(k)), b(clip(k))) for k in range(4, 7)]
    assert same.index(False) == first_changed
    assert [t.shape for t in a.temporal.keys] == shapes


def test_bad_live_values_are_refused_and_change_nothing(make):
    pipe = make(temporal_max_frames=2)
    bank = pipe.temporal
    for bad in (lambda: pipe.set_temporal_frames(3), lambda: pipe.set_temporal_frames(0),
                lambda: pipe.set_temporal_interval(0), lambda: pipe.set_temporal_injection(1.5),
                lambda: pipe.set_temporal_cache(2), lambda: pipe.set_latent_feedback(0.95)):
        with pytest.raises(ValueError):
            bad()
    assert (bank.frames, bank.interval, bank.injection, bank.cache, pipe.latent_feedback) == (2, 1, 0.0, True, 0.0)
    plain = make()
    with pytest.raises(RebuildRequired, match="max_frames"):
        plain.set_temporal_cache(True)


def test_frame_buffer_rows_each_have_a_ring(make):
    pipe = make(temporal_max_frames=2, f=2, steps=(32, 45))
    assert pipe.temporal.rows == 4
    x = torch.cat([clip(0), clip(1)])
    out = pipe(x)
    assert out.shape == (2, 3, SIZE, SIZE)
    pipe(torch.cat([clip(2), clip(3)]))
    k = pipe.temporal.keys[0]
    assert not torch.equal(k[0], k[1])  # two lanes of stage 0 saw different frames


def test_sequential_denoising_uses_the_same_bank(make):
    pipe = make(temporal_max_frames=2, denoising_batch=False)
    outs = run(pipe, range(3))
    assert all(o.shape == (1, 3, SIZE, SIZE) for o in outs)
    assert int(pipe.temporal._ptr) == 1  # fill -> 1, then one write per frame (not per call): 0, 1
    k = pipe.temporal.keys[0]
    assert not torch.equal(k[0], k[1]) and not torch.equal(k[1], k[2])  # each stage's call wrote its row


@torch.no_grad()
def test_a_latent_size_the_bank_was_not_built_for_is_a_clear_error(tiny_components):
    import copy

    from stream_core.temporal import TemporalBank

    unet = copy.deepcopy(tiny_components.unet)
    bank = TemporalBank(unet, 3, (4, 4), 1, "cpu", torch.float32)  # built for 4x4 latents
    name = bank.names[0][: -len(".processor")]
    attn = dict(unet.named_modules())[name]
    bank.begin_frame()
    bank.begin_call(0, 3, 0)
    with pytest.raises(RuntimeError, match="runs 64 tokens but its bank was built for 16"):
        attn(torch.randn((3, 64, attn.to_q.in_features)))
    bank.uninstall()
    assert not any(type(p).__name__ == "CachedSelfAttention" for p in unet.attn_processors.values())
