"""The similarity filter's GPU path decides from similarities already on the host: it never waits.

No GPU here: the CUDA event and the pinned buffer are replaced by fakes that follow their documented
behaviour (``Event.query()`` is True once the work before it has run; ``synchronize()`` waits, which
the filter must never call)."""

from __future__ import annotations

import torch

from stream_core.similarity import SimilarityFilter


class FakeEvent:
    """Stands in for ``torch.cuda.Event``: done when the test says so; waiting is a failure."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:  # pragma: no cover - the point is that it is never called
        raise AssertionError("the filter waited for the GPU")


class AsyncFilter(SimilarityFilter):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.events: list[FakeEvent] = []

    @staticmethod
    def _new_host() -> torch.Tensor:
        return torch.empty((), dtype=torch.float32)

    def _record_event(self, device: torch.device) -> FakeEvent:
        self.events.append(FakeEvent())
        return self.events[-1]


def test_decision_uses_the_similarity_that_has_landed_and_never_waits():
    f = AsyncFilter(threshold=0.0, max_skip=10)  # p = similarity: identical frames always skip
    assert f._read_async(torch.tensor(0.9)) is None  # nothing landed yet: the copy is in flight
    assert len(f.events) == 1
    assert f._read_async(torch.tensor(0.8)) is None  # still in flight: no second copy, no wait
    assert len(f.events) == 1
    f.events[0].done = True
    assert f._read_async(torch.tensor(0.7)) == torch.tensor(0.9).item()  # the landed one, then a new copy
    assert len(f.events) == 2
    f.events[1].done = True
    assert abs(f._read_async(torch.tensor(0.1)) - 0.7) < 1e-6


def test_until_a_similarity_lands_every_frame_is_processed_then_still_frames_skip():
    f = AsyncFilter(threshold=0.0, max_skip=10)
    f._asynchronous = lambda x: True  # as on CUDA
    x = torch.ones(1, 3, 8, 8)
    assert f.should_skip(x) is False  # the reference is recorded
    assert f.should_skip(x) is False  # similarity 1.0 still in flight: processed, not waited for
    f.events[-1].done = True
    assert f.should_skip(x) is True  # 1.0 has landed: p = 1, the still frame is skipped
    assert abs(f.last_similarity - 1.0) < 1e-6


def test_reference_buffer_is_reused_not_reallocated():
    f = SimilarityFilter(threshold=0.5, max_skip=0)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    f.should_skip(a)
    ref = f._ref
    f.should_skip(b)  # max_skip 0: processed, becomes the reference
    assert f._ref is ref and torch.equal(f._ref, b)
