"""Cards the publisher shows instead of a picture: black, and a "NO SIGNAL" slate.

Each card is rendered once per output size with OpenCV and then reused, so showing a card costs
nothing per frame. The slate's small second line (e.g. ``source lost - 12 s``) is re-rendered
only when its text changes, which the publisher limits to once a second.
"""

from __future__ import annotations

import cv2
import numpy as np

_BACKGROUND = (18, 18, 22)
_TITLE = (235, 235, 235)
_SUBTITLE = (150, 150, 160)
_FRAME = (70, 70, 80)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_DRAW_SIDE = 640


def _fit_font_scale(text: str, target_w: float, thickness: int) -> float:
    (w, _), _ = cv2.getTextSize(text, _FONT, 1.0, thickness)
    return max(0.2, target_w / max(1, w))


def _put_centered(
    img: np.ndarray,
    text: str,
    center_y: int,
    scale: float,
    color: tuple[int, int, int],
    thickness: int,
) -> None:
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    x = (img.shape[1] - w) // 2
    cv2.putText(img, text, (x, center_y + h // 2), _FONT, scale, color, thickness, cv2.LINE_AA)


def render_slate(
    width: int, height: int, title: str = "NO SIGNAL", subtitle: str = ""
) -> np.ndarray:
    """A new H x W x 3 RGB slate: dark background, thin frame, centred title and subtitle.

    Drawn at most :data:`MAX_DRAW_SIDE` px on the long side and scaled up: anti-aliased text is
    slow to draw (a 4K card drawn directly takes ~100 ms; this way ~5 ms), and the publisher
    redraws the card once a second while the source is lost.
    """
    long_side = max(width, height)
    if long_side > MAX_DRAW_SIDE:
        scale = MAX_DRAW_SIDE / long_side
        small = _draw_slate(
            max(1, round(width * scale)), max(1, round(height * scale)), title, subtitle
        )
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return _draw_slate(width, height, title, subtitle)


def _draw_slate(width: int, height: int, title: str, subtitle: str) -> np.ndarray:
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = _BACKGROUND
    margin = max(2, min(width, height) // 24)
    line = max(1, min(width, height) // 240)
    if width > 2 * margin and height > 2 * margin:
        cv2.rectangle(img, (margin, margin), (width - margin, height - margin), _FRAME, line)
    thickness = max(1, min(width, height) // 160)
    scale = _fit_font_scale(title, width * 0.6, thickness)
    (_, title_h), _ = cv2.getTextSize(title, _FONT, scale, thickness)
    title_y = height // 2 - (title_h // 2 if subtitle else 0)
    _put_centered(img, title, title_y, scale, _TITLE, thickness)
    if subtitle:
        sub_thickness = max(1, thickness // 2)
        sub_scale = min(scale * 0.4, _fit_font_scale(subtitle, width * 0.8, sub_thickness))
        _put_centered(
            img, subtitle, title_y + title_h + title_h // 2, sub_scale, _SUBTITLE, sub_thickness
        )
    return img


class CardCache:
    """Black and slate cards, rendered on first use and reused while size and text stay the same."""

    def __init__(self, title: str = "NO SIGNAL") -> None:
        self.title = title
        self._black: np.ndarray | None = None
        self._slate: np.ndarray | None = None
        self._slate_key: tuple[int, int, str] | None = None
        self.renders = 0

    def black(self, width: int, height: int) -> np.ndarray:
        card = self._black
        if card is None or card.shape[:2] != (height, width):
            card = self._black = np.zeros((height, width, 3), dtype=np.uint8)
        return card

    def slate(self, width: int, height: int, subtitle: str = "") -> np.ndarray:
        key = (width, height, subtitle)
        if self._slate is None or self._slate_key != key:
            self._slate = render_slate(width, height, self.title, subtitle)
            self._slate_key = key
            self.renders += 1
        return self._slate
