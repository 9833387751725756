"""The prepared slerps (fader paths) against the reference :func:`stream_core.blend.slerp`."""

from __future__ import annotations

import pytest
import torch

from stream_core.blend import Slerp, slerp, slerp_weights
from stream_core.conditioning import Morph, SeedNoise, upload
from stream_core.pipeline import make_noise
from tests.core.devguard import DeviceGuard


def _pair(shape=(2, 4, 8, 8), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("t", [0.0, 1e-4, 0.25, 0.5, 0.77, 0.9999, 1.0])
def test_prepared_slerp_equals_the_reference(t):
    a, b = _pair()
    s = Slerp(a, b)
    assert torch.allclose(s.at(t), slerp(a, b, t), atol=2e-6, rtol=0)
    # the same pair at another mix: nothing of the previous mix is kept
    assert torch.allclose(s.at(1.0 - t), slerp(a, b, 1.0 - t), atol=2e-6, rtol=0)


@pytest.mark.parametrize("b_of", [lambda a: 2.5 * a, lambda a: -a, lambda a: torch.zeros_like(a)],
                         ids=["parallel", "antiparallel", "zero"])
def test_prepared_slerp_falls_back_to_the_linear_mix_like_the_reference(b_of):
    a, _ = _pair((3, 5))
    b = b_of(a)
    for t in (0.2, 0.6):
        want = slerp(a, b, t)
        assert torch.isfinite(want).all()
        assert torch.allclose(Slerp(a, b).at(t), want, atol=2e-6)
        na, nb = float(a.norm()), float(b.norm())
        alpha, beta = slerp_weights(na, nb, float((a * b).sum()), t)
        assert torch.allclose(alpha * a + beta * b, want, atol=2e-6)


def test_host_weights_equal_the_reference_and_keep_unit_variance():
    a, b = _pair((4, 4, 64, 64), seed=3)
    for t in (0.1, 0.5, 0.8):
        alpha, beta = slerp_weights(float(a.norm()), float(b.norm()), float((a * b).sum()), t)
        mixed = alpha * a + beta * b
        assert torch.allclose(mixed, slerp(a, b, t), atol=2e-6)
        assert abs(float(mixed.std()) - 1.0) < 0.02  # a linear mix at 0.5 would be ~0.71


def test_prepared_slerp_keeps_dtype_and_device_and_reads_nothing_on_the_host():
    a = torch.empty((1, 77, 32), device="meta", dtype=torch.float16)
    b = torch.empty((1, 77, 32), device="meta", dtype=torch.float16)
    guard = DeviceGuard()
    with guard:  # meta tensors: any host read of a device value would raise here
        s = Slerp(a, b)
        out = s.at(0.4)
    assert guard.violations == []
    assert (out.device.type, out.dtype, tuple(out.shape)) == ("meta", torch.float16, (1, 77, 32))
    a16, b16 = (x.to(torch.float16) for x in _pair((1, 77, 32)))
    got = Slerp(a16, b16).at(0.4)
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), slerp(a16, b16, 0.4).float(), atol=2e-3)


def test_prepared_slerp_refuses_mismatched_pairs():
    with pytest.raises(ValueError, match="equal shapes"):
        Slerp(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="one device"):
        Slerp(torch.zeros(3), torch.zeros(3, device="meta"))


def _seeds(dtype=torch.float32, device="cpu") -> SeedNoise:
    return SeedNoise(lambda s: make_noise(s, 2, 4, 8, 8), torch.device(device), dtype)


@pytest.mark.parametrize("mix", [0.0, 0.3, 0.5, 1.0])
def test_seed_crossfader_equals_the_slerp_of_the_two_seeds_noise(mix):
    noise = _seeds()
    want = slerp(make_noise(11, 2, 4, 8, 8), make_noise(77, 2, 4, 8, 8), mix)
    assert torch.allclose(noise.mix(11, 77, mix), want, atol=2e-6)
    # the other order is the mirror image
    assert torch.allclose(noise.mix(77, 11, 1.0 - mix), want, atol=2e-6)


def test_seed_crossfader_draws_each_seed_once_and_forgets_old_ones():
    noise = _seeds()
    for k in range(10):
        noise.mix(1, 2, 0.1 * k)
    assert noise.draws == 2
    for s in range(3, 10):  # more seeds than the capacity: old ones are dropped on both sides
        noise.mix(s, s + 1, 0.5)
    assert len(noise._cache) <= noise.capacity
    assert set(noise._host) == set(noise._cache)
    assert len(noise._pairs) <= noise.capacity
    # a dropped seed is drawn again, identically
    assert torch.equal(noise.get(1), make_noise(1, 2, 4, 8, 8))


def test_seed_crossfader_on_the_device_reads_no_device_value():
    noise = _seeds(torch.float16, "meta")
    guard = DeviceGuard()
    with guard:
        out = noise.mix(5, 6, 0.35)
    assert guard.violations == []
    assert (out.device.type, out.dtype) == ("meta", torch.float16)


def test_morph_blends_each_part_with_its_own_prepared_pair():
    n0, n1 = _pair((2, 4, 8, 8), seed=1)
    p0, p1 = _pair((1, 77, 32), seed=2)
    q0, q1 = _pair((1, 77, 32), seed=4)
    m = Morph(n0, n1, p0, p1, q0, q1)
    for u in (0.0, 0.3, 0.6, 1.0):
        assert torch.allclose(m.noise_at(u), slerp(n0, n1, u), atol=2e-6)
        pos, neg = m.embeds_at(u)
        assert torch.allclose(pos, slerp(p0, p1, u), atol=2e-6)
        assert torch.allclose(neg, slerp(q0, q1, u), atol=2e-6)
    # a part taken over stops; a new end for a part gets a new pair
    m.noise_to = None
    assert m.noise_at(0.5) is None
    m.pos_to = q1
    assert torch.allclose(m.embeds_at(0.5)[0], slerp(p0, q1, 0.5), atol=2e-6)


def test_seed_crossfader_works_with_the_smallest_cache():
    noise = SeedNoise(lambda s: make_noise(s, 2, 4, 8, 8), torch.device("cpu"), torch.float32, capacity=1)
    want = slerp(make_noise(1, 2, 4, 8, 8), make_noise(2, 2, 4, 8, 8), 0.5)
    assert torch.allclose(noise.mix(1, 2, 0.5), want, atol=2e-6)


def test_new_seed_noise_reaches_cuda_through_pinned_memory_without_a_host_wait(monkeypatch):
    """No CUDA here: a fake records what the upload asks of torch: the dtype converted on the host,
    then pinned, then one non-blocking copy of the same dtype (nothing pageable on the way)."""
    calls = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin_memory") or self)

    def fake_to(self, *args, **kwargs):
        calls.append(("to", args, kwargs))
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            return real_to(self, "meta")  # stands in for the device copy
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    cuda = torch.device("cuda", 0)
    out = upload(torch.randn(2, 4), cuda, torch.float16)
    assert calls == [("to", (), {"dtype": torch.float16}), "pin_memory", ("to", (cuda,), {"non_blocking": True})]
    assert (out.device.type, out.dtype) == ("meta", torch.float16)
    calls.clear()
    upload(torch.randn(2, 4), torch.device("meta"), torch.float16)  # other devices: a plain copy
    assert calls == [("to", (torch.device("meta"), torch.float16), {})]
