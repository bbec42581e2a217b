"""Checks on drawn matplotlib figures, shared by the tests of the library's pictures."""

from __future__ import annotations


def assert_inside_figure(fig, artists) -> int:
    """Every visible text artist's drawn extent lies inside the figure (nothing is cut);
    returns how many were checked."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    checked = 0
    for a in artists:
        if not a.get_visible() or not a.get_text():
            continue
        bb = a.get_window_extent(renderer)
        assert box.x0 - 0.5 <= bb.x0 and bb.x1 <= box.x1 + 0.5, (a.get_text(), bb.bounds)
        assert box.y0 - 0.5 <= bb.y0 and bb.y1 <= box.y1 + 0.5, (a.get_text(), bb.bounds)
        checked += 1
    return checked
