#!/usr/bin/env python3
"""Render a coloured terminal capture (`tmux capture-pane -e -p -N`) to a PNG.

    scripts/ansi_png.py CAPTURE.ans OUT.png [--cols 120] [--rows 40] [--size 15]

Understands the SGR sequences tmux emits: 16 colours, 256 colours (38;5;N), truecolor
(38;2;R;G;B), bold, dim, underline, reverse and the default colours (italic and other escape
sequences are dropped). tmux carries the attributes over from one line to the next, so they are
not reset at a line break; without -N it trims a line's trailing blanks, which are then drawn
in the default colours. Each cell is one box of a fixed grid: East Asian wide characters take
two, combining marks join the character before them; box drawing and block elements are the
font's glyphs scaled to fill their cell, so lines join, and Braille is drawn as dots. Needs
Pillow and a monospace TTF: DejaVu Sans Mono (and its -Bold) unless $ANSI_PNG_FONT says
otherwise; characters it lacks come from DejaVu Sans, else from what fontconfig finds.
"""
import argparse
import os
import re
import shutil
import subprocess
import unicodedata

from PIL import Image, ImageDraw, ImageFont

FONT = os.environ.get("ANSI_PNG_FONT", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
BG, FG = (24, 26, 31), (208, 210, 214)  # the default background and foreground
PALETTE = [  # the 16 ANSI colours, a dark theme whose grey (8) stays readable on the background
    (59, 63, 70), (224, 108, 117), (152, 195, 121), (229, 192, 123),
    (97, 175, 239), (198, 120, 221), (86, 182, 194), (200, 204, 212),
    (122, 128, 138), (255, 123, 134), (181, 232, 144), (255, 214, 138),
    (128, 196, 255), (226, 156, 240), (127, 216, 227), (255, 255, 255),
]
ESC = re.compile(r"\x1b(?:\[([0-9;:?<=>]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()].|.)")
PLAIN = dict(fg=None, bg=None, bold=False, dim=False, under=False, rev=False)


def xterm256(n):
    if n < 16:
        return PALETTE[n]
    if n < 232:
        lv = [0, 95, 135, 175, 215, 255]
        return (lv[(n - 16) // 36], lv[(n - 16) // 6 % 6], lv[(n - 16) % 6])
    return (8 + 10 * (n - 232),) * 3


def sgr(params, st):
    """Apply one SGR parameter list (`1;38;5;6`) to the state ST."""
    ps = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params or "0")]
    flags = {1: ("bold", True), 2: ("dim", True), 4: ("under", True), 7: ("rev", True),
             24: ("under", False), 27: ("rev", False)}
    i = 0
    while i < len(ps):
        p = ps[i]
        if p == 0:
            st.update(PLAIN)
        elif p in flags:
            st[flags[p][0]] = flags[p][1]
        elif p == 22:
            st.update(bold=False, dim=False)
        elif 30 <= p <= 37 or 90 <= p <= 97:
            st["fg"] = PALETTE[p - 30 if p < 90 else p - 82]
        elif 40 <= p <= 47 or 100 <= p <= 107:
            st["bg"] = PALETTE[p - 40 if p < 100 else p - 92]
        elif p in (39, 49):
            st["fg" if p == 39 else "bg"] = None
        elif p in (38, 48) and i + 2 < len(ps):
            key = "fg" if p == 38 else "bg"
            if ps[i + 1] == 5:
                st[key], i = xterm256(ps[i + 2] & 255), i + 2
            elif ps[i + 1] == 2 and i + 4 < len(ps):
                st[key], i = tuple(v & 255 for v in ps[i + 2 : i + 5]), i + 4
        i += 1


def width(ch):
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def parse(text, cols, rows):
    """The grid: ROWS lists of COLS cells (text, style); text is '' right of a wide character."""
    st, grid = dict(PLAIN), []
    for line in text.rstrip("\n").split("\n")[:rows]:
        row, pos = [], 0
        for esc in [*ESC.finditer(line), None]:
            end = esc.start() if esc else len(line)
            for ch in line[pos:end]:
                if unicodedata.combining(ch) or ch in "\u200d\ufe0e\ufe0f":
                    if row:  # onto the character before (left of a wide one's padding)
                        i = len(row) - 1 - (row[-1][0] == "")
                        row[i] = (row[i][0] + ch, row[i][1])
                elif ord(ch) >= 32:
                    row += [(ch, dict(st))] + [("", dict(st))] * (width(ch) - 1)
            if esc:
                pos = esc.end()
                if esc.group(2) == "m":
                    sgr(esc.group(1), st)
        row = row[:cols]
        if len(row) == cols and width(row[-1][0][:1] or " ") == 2:
            row[-1] = (" ", row[-1][1])  # a wide character cut by the right edge
        grid.append(row + [(" ", PLAIN)] * (cols - len(row)))
    return grid + [[(" ", PLAIN)] * cols] * (rows - len(grid))


def colours(s):
    fg, bg = s["fg"] or FG, s["bg"] or BG
    if s["rev"]:
        fg, bg = bg, fg
    if s["dim"]:
        fg = tuple((a + b) // 2 for a, b in zip(fg, bg))
    return fg, bg


def fills_cell(text):
    """Box drawing, block elements and Braille: glyphs that must meet their neighbours."""
    return len(text) == 1 and ("\u2500" <= text <= "\u259f" or "\u2800" <= text <= "\u28ff")


class Fonts:
    def __init__(self, size):
        self.size = size
        self.regular = ImageFont.truetype(FONT, size)
        bold = FONT.replace(".ttf", "-Bold.ttf")
        self.bold = ImageFont.truetype(bold, size) if os.path.exists(bold) else self.regular
        sans = os.path.join(os.path.dirname(FONT), "DejaVuSans.ttf")
        self.fallbacks = [ImageFont.truetype(sans, size)] if os.path.exists(sans) else []
        self.cache, self.notdef = {}, {}

    def has(self, font, ch):
        """Whether FONT has a glyph for CH: it draws differently from an unassigned code point."""
        def ink(c):
            img = Image.new("L", (self.size * 3, self.size * 2))
            ImageDraw.Draw(img).text((0, 0), c, font=font, fill=255)
            return img.tobytes()
        if font not in self.notdef:
            self.notdef[font] = ink("\U0010fffd")
        return ink(ch) != self.notdef[font]

    def pick(self, ch, bold):
        """The font to draw CH with: the monospace one, else the first fallback that has it."""
        first = self.bold if bold else self.regular
        if (ch, bold) not in self.cache:
            found = next((f for f in [first] + self.fallbacks if self.has(f, ch)), None)
            if found is None and shutil.which("fc-match"):
                path = subprocess.run(["fc-match", "-f", "%{file}", f":charset={ord(ch):x}"],
                                      capture_output=True, text=True).stdout
                if path.endswith((".ttf", ".otf", ".ttc")):
                    f = ImageFont.truetype(path, self.size)
                    if self.has(f, ch):
                        found = f
                        self.fallbacks.append(f)
            self.cache[(ch, bold)] = found or first
        return self.cache[(ch, bold)]

    def cell(self, ch, bold, w, h):
        """The mask of CH drawn 4x larger and scaled to exactly W x H: the glyph's em box fills
        the cell, so lines and blocks join the next cell without seams or overlaps."""
        key = (ch, bold, w, h)
        if key not in self.cache:
            if "\u2800" <= ch <= "\u28ff":  # Braille: round dots on a 2 x 4 grid
                img, r = Image.new("L", (w * 4, h * 4)), min(w, h / 2) * 0.64
                for bit, (cx, cy) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3)]):
                    if (ord(ch) - 0x2800) >> bit & 1:
                        x, y = (cx + 0.5) * w * 2, (cy + 0.5) * h
                        ImageDraw.Draw(img).ellipse([x - r, y - r, x + r, y + r], fill=255)
            else:
                big = self.pick(ch, bold).font_variant(size=self.size * 4)
                ascent, descent = big.getmetrics()
                img = Image.new("L", (max(1, round(big.getlength(ch))), ascent + descent))
                ImageDraw.Draw(img).text((0, ascent), ch, font=big, fill=255, anchor="ls")
            self.cache[key] = img.resize((w, h), Image.Resampling.BOX)
        return self.cache[key]


def render(grid, size, pad):
    fonts = Fonts(size)
    ascent, descent = fonts.regular.getmetrics()
    cw, ch = round(fonts.regular.getlength("M")), ascent + descent
    img = Image.new("RGB", (len(grid[0]) * cw + 2 * pad, len(grid) * ch + 2 * pad), BG)
    draw = ImageDraw.Draw(img)
    cells = [(pad + c * cw, pad + r * ch, text, s) for r, row in enumerate(grid) for c, (text, s) in enumerate(row)]
    for x, y, text, s in cells:  # backgrounds first, so no cell paints over a glyph's edge
        if colours(s)[1] != BG:
            draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=colours(s)[1])
    for x, y, text, s in cells:
        fg, w = colours(s)[0], cw * width(text[:1] or " ")
        if fills_cell(text):
            draw.bitmap((x, y), fonts.cell(text, s["bold"], w, ch), fill=fg)
        elif text.strip():
            font = fonts.pick(text[0], s["bold"])
            gx = x if font in (fonts.regular, fonts.bold) else x + (w - font.getlength(text)) / 2
            draw.text((gx, y + ascent), text, font=font, fill=fg, anchor="ls")
        if s["under"] and text:
            draw.line([x, y + ascent + 1, x + w - 1, y + ascent + 1], fill=fg)
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("png")
    ap.add_argument("--cols", type=int, default=120)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--size", type=int, default=15, help="font size in pixels (default 15)")
    ap.add_argument("--pad", type=int, default=10, help="margin in pixels (default 10)")
    a = ap.parse_args()
    with open(a.capture, encoding="utf-8", errors="replace") as f:
        img = render(parse(f.read(), a.cols, a.rows), a.size, a.pad)
    # An adaptive palette keeps the antialiased edges and makes the file several times smaller.
    img.quantize(128, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(a.png, optimize=True)


if __name__ == "__main__":
    main()
