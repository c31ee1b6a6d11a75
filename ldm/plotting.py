"""Labelled figures drawn with PIL: a grid of equal panels with a title, column headers, row labels, an axis
label under the grid, an optional colour bar and a footnote (matplotlib is not a dependency of the package).

:func:`panel_grid` returns a :class:`Figure`: the picture and where every panel was drawn, so a test can
cut a panel back out and compare it with what went in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
MUTED = (80, 80, 80)
MARGIN = 12  # around the figure
PAD = 4  # between panels
GROUP_GAP = 14  # extra space after a column named in ``column_gaps`` (conditions | results)
TITLE_SIZE, LABEL_SIZE, NOTE_SIZE = 15, 12, 11

# viridis at 10 evenly spaced stops (perceptually uniform, readable in greyscale and by colour-blind readers)
VIRIDIS = np.array([
    (0x44, 0x01, 0x54), (0x48, 0x28, 0x78), (0x3E, 0x4A, 0x89), (0x31, 0x68, 0x8E), (0x26, 0x82, 0x8E),
    (0x1F, 0x9E, 0x89), (0x35, 0xB7, 0x79), (0x6D, 0xCD, 0x59), (0xB4, 0xDE, 0x2C), (0xFD, 0xE7, 0x25),
], dtype=np.float64)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Text


@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` px (Pillow >= 10.1 with FreeType), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_width(text: str, fnt: ImageFont.ImageFont) -> int:
    return int(np.ceil(fnt.getlength(text)))


def line_height(fnt: ImageFont.ImageFont) -> int:
    top, bottom = fnt.getbbox("Ag|")[1::2]
    return bottom - top + 3


def wrap(text: str, fnt: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` px; explicit newlines are kept, a word wider than the width is broken."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            while text_width(word, fnt) > width and len(word) > 1:  # e.g. a long path
                cut = max(k for k in range(1, len(word) + 1) if text_width(word[:k], fnt) <= width or k == 1)
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            trial = f"{line} {word}".strip()
            if line and text_width(trial, fnt) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[str], fnt: ImageFont.ImageFont,
               fill=INK, width: Optional[int] = None) -> None:
    """Lines from the top-left ``xy``; centred in ``width`` px when given."""
    x, y = xy
    for line in lines:
        dx = 0 if width is None else max((width - text_width(line, fnt)) // 2, 0)
        draw.text((x + dx, y), line, font=fnt, fill=fill)
        y += line_height(fnt)


def text_panel(text: str, size: int, height: Optional[int] = None, fill=(245, 245, 245), font_size: int = LABEL_SIZE) -> np.ndarray:
    """A ``size`` px wide panel (``height`` px tall, default square) with ``text`` wrapped in it (a caption used
    as a condition); the font shrinks until the text fits."""
    height = size if height is None else height
    for fs in range(font_size, 6, -1):
        fnt = font(fs)
        lines = wrap(text, fnt, size - 8)
        if len(lines) * line_height(fnt) <= height - 8:
            break
    canvas = Image.new("RGB", (size, height), fill)
    draw_lines(ImageDraw.Draw(canvas), (4, 4), lines, fnt)
    return np.asarray(canvas)


def text_height(texts: Sequence[str], size: int, font_size: int = LABEL_SIZE) -> int:
    """The height a row of :func:`text_panel` ``size`` px wide needs to show every text at ``font_size``."""
    fnt = font(font_size)
    return max(len(wrap(t, fnt, size - 8)) for t in texts) * line_height(fnt) + 8


# ------------------------------------------------------------------------------------------------
# Colour


def colormap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Scalars ``[H, W]`` -> viridis RGB ``[H, W, 3]`` uint8, ``vmin`` dark purple, ``vmax`` yellow (clipped)."""
    if not vmax > vmin:
        raise ValueError(f"colormap needs vmax > vmin, got {vmin}, {vmax}")
    x = np.clip((np.asarray(values, dtype=np.float64) - vmin) / (vmax - vmin), 0.0, 1.0) * (len(VIRIDIS) - 1)
    lo = np.minimum(np.floor(x).astype(np.int64), len(VIRIDIS) - 2)
    frac = (x - lo)[..., None]
    return (VIRIDIS[lo] * (1 - frac) + VIRIDIS[lo + 1] * frac).round().astype(np.uint8)


def colorbar(height: int, vmin: float, vmax: float, label: str, ticks: int = 5, bar_width: int = 14) -> np.ndarray:
    """A vertical colour bar ``height`` px tall (``vmax`` at the top) with tick values and a rotated label."""
    fnt = font(NOTE_SIZE)
    values = np.linspace(vmax, vmin, height)[:, None].repeat(bar_width, axis=1)
    tick_values = np.linspace(vmin, vmax, ticks)
    tick_texts = [f"{v:.2f}" for v in tick_values]
    tick_w = max(text_width(t, fnt) for t in tick_texts)
    label_img = Image.new("RGB", (height, line_height(fnt) + 2), BACKGROUND)
    draw_lines(ImageDraw.Draw(label_img), (0, 1), wrap(label, fnt, 10 * height)[:1], fnt, width=height)
    label_img = label_img.rotate(90, expand=True)
    half = line_height(fnt) // 2
    canvas = Image.new("RGB", (bar_width + 6 + tick_w + 6 + label_img.width, height + 2 * half), BACKGROUND)
    canvas.paste(Image.fromarray(colormap(values, vmin, vmax)), (0, half))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, half, bar_width - 1, half + height - 1), outline=INK)
    for v, t in zip(tick_values, tick_texts):
        y = half + round((vmax - v) / (vmax - vmin) * (height - 1))
        draw.line((bar_width, y, bar_width + 3, y), fill=INK)
        draw.text((bar_width + 6, y - half), t, font=fnt, fill=INK)
    canvas.paste(label_img, (bar_width + 6 + tick_w + 6, half))
    return np.asarray(canvas)


# ------------------------------------------------------------------------------------------------
# Panels and the grid


def fit_panel(image: np.ndarray, size: int, smooth: bool = True) -> np.ndarray:
    """An ``[h, w, 3]`` uint8 picture as a ``size`` x ``size`` panel: whole-number enlargements and every mask
    (``smooth=False``) use nearest neighbours (pixels stay visible), other resizes Lanczos."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    exact = size % h == 0 and size % w == 0 and size >= max(h, w)
    method = Image.NEAREST if exact or not smooth else Image.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size, size), method))


@dataclass
class Figure:
    """A drawn figure: the picture, its row and column labels, and each panel's box ``(left, top, width, height)``."""

    image: np.ndarray  # [H, W, 3] uint8
    rows: list[str]
    columns: list[str]
    panels: dict[tuple[int, int], tuple[int, int, int, int]]  # (row, column) -> box, for the panels drawn

    def panel(self, row: int, column: int) -> np.ndarray:
        left, top, w, h = self.panels[(row, column)]
        return self.image[top:top + h, left:left + w]


def panel_grid(
    cells: Sequence[Sequence[Optional[np.ndarray]]],
    *,
    size: int,
    title: str = "",
    column_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    x_label: str = "",
    x_label_columns: Optional[tuple[int, int]] = None,
    column_gaps: Sequence[int] = (),
    colorbar_rows: Optional[tuple[int, int]] = None,
    colorbar_range: tuple[float, float] = (0.0, 1.0),
    colorbar_label: str = "",
    footnote: str = "",
    smooth: Optional[Mapping[tuple[int, int], bool]] = None,
    row_heights: Sequence[Optional[int]] = (),
    row_label_width: int = 170,
) -> Figure:
    """Draw rows of panels (``None``: left blank), each fitted to ``size`` px (:func:`fit_panel`; ``smooth``
    maps (row, column) -> False for masks). ``row_heights`` (one per row, None: ``size``) makes a row shorter
    or taller; its panels must then already be ``size`` wide and that tall (e.g. :func:`text_panel` strips).

    ``column_labels`` head the columns; ``row_labels`` sit left of the rows (wrapped to ``row_label_width``);
    ``x_label`` is centred under columns ``x_label_columns`` (first, last; default all); ``column_gaps``
    names the columns after which a wider gap separates groups; a colour bar for ``colorbar_range`` is drawn
    right of rows ``colorbar_rows`` (first, last) when given; ``footnote`` is wrapped under everything.
    """
    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("panel_grid needs at least one row and one column")
    for what, labels, n in (("column_labels", column_labels, n_cols), ("row_labels", row_labels, n_rows),
                            ("row_heights", row_heights, n_rows)):
        if labels and len(labels) != n:
            raise ValueError(f"{what} has {len(labels)} entries for {n}")
    smooth = smooth or {}
    label_font, note_font, title_font = font(LABEL_SIZE), font(NOTE_SIZE), font(TITLE_SIZE)

    xs, x = [], 0
    for c in range(n_cols):
        xs.append(x)
        x += size + PAD + (GROUP_GAP if c in column_gaps else 0)
    grid_w = x - PAD
    row_lines = [wrap(t, label_font, row_label_width) for t in row_labels]
    label_w = (max(text_width(line, label_font) for lines in row_lines for line in lines) + 10) if row_labels else 0
    heights = [h or size for h in row_heights] if row_heights else [size] * n_rows
    ys = [sum(heights[:r]) + r * PAD for r in range(n_rows)]  # row tops, relative to the grid
    bar = None
    if colorbar_rows is not None:
        first, last = colorbar_rows
        bar = colorbar(ys[last] + heights[last] - ys[first], *colorbar_range, colorbar_label)
    bar_w = 0 if bar is None else bar.shape[1] + 10
    width = 2 * MARGIN + label_w + grid_w + bar_w

    title_lines = wrap(title, title_font, width - 2 * MARGIN) if title else []
    col_lines = [wrap(t, label_font, size + PAD // 2) for t in column_labels]
    header_h = max((len(lines) for lines in col_lines), default=0) * line_height(label_font)
    top = MARGIN + len(title_lines) * line_height(title_font) + (6 if title_lines else 0) + header_h + (2 if header_h else 0)
    grid_h = ys[-1] + heights[-1]
    a, b = x_label_columns or (0, n_cols - 1)
    span_left, span_w = xs[a], xs[b] + size - xs[a]
    x_lines = wrap(x_label, label_font, span_w) if x_label else []
    foot_lines = wrap(footnote, note_font, width - 2 * MARGIN) if footnote else []
    height = (top + grid_h + (6 + len(x_lines) * line_height(label_font) if x_lines else 0)
              + (8 + len(foot_lines) * line_height(note_font) if foot_lines else 0) + MARGIN)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw_lines(draw, (MARGIN, MARGIN), title_lines, title_font)
    left = MARGIN + label_w
    for c, lines in enumerate(col_lines):
        draw_lines(draw, (left + xs[c], top - 2 - len(lines) * line_height(label_font)), lines, label_font, width=size)
    panels = {}
    for r, row in enumerate(cells):
        y, h = top + ys[r], heights[r]
        if row_labels:
            lines = row_lines[r]
            draw_lines(draw, (MARGIN, y + (h - len(lines) * line_height(label_font)) // 2), lines, label_font)
        for c, cell in enumerate(row):
            if cell is None:
                continue
            cell = np.asarray(cell, dtype=np.uint8)
            if h != size and cell.shape[:2] != (h, size):
                raise ValueError(f"row {r} is {h} px tall: its panels must be {size}x{h} px, got {cell.shape[1]}x{cell.shape[0]}")
            picture = cell if h != size else fit_panel(cell, size, smooth.get((r, c), True))
            canvas.paste(Image.fromarray(picture), (left + xs[c], y))
            panels[(r, c)] = (left + xs[c], y, size, h)
    y = top + grid_h + 6
    if x_lines:
        draw.line((left + span_left, y - 3, left + span_left + span_w - 1, y - 3), fill=MUTED)
        draw_lines(draw, (left + span_left, y), x_lines, label_font, width=span_w)
        y += len(x_lines) * line_height(label_font)
    if bar is not None:
        bar_top = top + ys[colorbar_rows[0]] - line_height(note_font) // 2
        canvas.paste(Image.fromarray(bar), (left + grid_w + 10, bar_top))
    if foot_lines:
        draw_lines(draw, (MARGIN, y + 8), foot_lines, note_font, fill=MUTED)
    return Figure(np.asarray(canvas), list(row_labels), list(column_labels), panels)
