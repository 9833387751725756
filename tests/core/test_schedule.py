"""The strength -> t_index_list mapping: the lists the reference's users run, monotonic, round trip."""

from __future__ import annotations

import pytest

from stream_core.schedule import LAST_INDEX, strength_to_t_index_list, t_index_list_to_strength


@pytest.mark.parametrize(
    "strength,n,expected",
    [
        (1.0, 4, (0, 16, 32, 45)),  # the reference's txt2img-like 4-step list
        (1.0 - 32 / 45, 2, (32, 45)),  # the reference's img2img 2-step list
        (1.0 - 35 / 45, 1, (35,)),  # a 1-step sd-turbo img2img list
        (1.0 - 16 / 45, 3, (16, 32, 45)),
        (0.5, 2, (23, 45)),
        (0.0, 1, (45,)),
        (0.0, 2, (44, 45)),
        (0.0, 4, (42, 43, 44, 45)),
    ],
)
def test_strength_gives_the_reference_lists(strength, n, expected):
    assert strength_to_t_index_list(strength, n) == expected


def test_no_list_ends_on_an_almost_clean_latent():
    for n in range(1, 6):
        for i in range(101):
            lst = strength_to_t_index_list(i / 100, n)
            assert lst[-1] <= LAST_INDEX == 45
            if n > 1:
                assert lst[-1] == 45


def test_round_trip_and_monotonic():
    for n in range(1, 6):
        prev_strength = None
        for first in range(0, LAST_INDEX - n + 2):
            lst = strength_to_t_index_list(1.0 - first / LAST_INDEX, n)
            s = t_index_list_to_strength(lst)
            # the feedback strength maps back onto the same list, also rounded as it is echoed
            assert strength_to_t_index_list(s, n) == lst
            assert strength_to_t_index_list(round(s, 4), n) == lst
            if prev_strength is not None:
                assert s < prev_strength  # a later first step is a lower strength
            prev_strength = s
    # a hand-written list from the reference maps onto itself through its strength
    for lst in [(32, 45), (16, 32, 45), (0, 16, 32, 45), (35,)]:
        assert strength_to_t_index_list(t_index_list_to_strength(lst), len(lst)) == lst
