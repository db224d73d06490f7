"""A procedural street-scene dataset: nothing on disk, nothing downloaded, deterministic.

Every sample is rendered on the fly from (seed, split, index) with numpy + OpenCV. The
scene is a pinhole view of a straight street: road with lane paint and crossings,
sidewalks, optional terrain and fences, building facades with windows, a sky, trees,
and cars, people, poles, signs and traffic lights at many depths, drawn far to near.
Lighting, cast shadows, texture, blur and sensor noise touch only the image; the mask
is drawn with the same polygons and no anti-aliasing, so its boundaries are crisp.

What makes it a useful benchmark rather than a colouring book: thin and small objects
far away (poles, people, lights), classes told apart by context rather than colour
(road vs sidewalk vs a grey facade, pole vs tree trunk, terrain vs vegetation), and
colour ranges that overlap between classes.

Geometry: units are camera heights (about 1.5 m); `z` is depth, `u` is lateral offset
(right positive), `h` height above the ground. A point projects to
x = vx + u * f / z, y = horizon + f * (1 - h) / z, with `f` the focal length in pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.errors import SegkdError
from core.labels import LabelSpec
from distill.data.base import Sample, SegDataset, Transform
from distill.data.spec import SYNTHETIC_DEFAULTS

SYNTHETIC_CLASSES = (
    "road", "sidewalk", "building", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "car",
)  # fmt: skip
SYNTHETIC = LabelSpec.subset_of_cityscapes(SYNTHETIC_CLASSES)
(ROAD, SIDEWALK, BUILDING, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR) = range(
    len(SYNTHETIC_CLASSES)
)
SPLIT_CODES = {"train": 0, "val": 1}

_SHIFT = 4  # cv2 fixed-point bits: polygons keep sub-pixel precision on image and mask alike
_ONE = 1 << _SHIFT

# Texture strength per class (index = train id), as cv2.LUT tables: mid-frequency blotches
# (foliage, grass) and per-pixel grain (asphalt).
_TEX_MID = np.zeros(256, dtype=np.float32)
_TEX_MID[:12] = (0.05, 0.06, 0.05, 0.06, 0.03, 0.02, 0.02, 0.30, 0.16, 0.02, 0.10, 0.03)
_TEX_FINE = np.zeros(256, dtype=np.float32)
_TEX_FINE[:12] = (0.07, 0.05, 0.04, 0.05, 0.02, 0.02, 0.02, 0.14, 0.09, 0.01, 0.04, 0.02)

_CAR_COLOURS = np.array(
    [(235, 235, 235), (25, 25, 28), (120, 122, 125), (175, 178, 182), (160, 25, 25),
     (30, 50, 120), (20, 30, 60), (40, 80, 50), (190, 175, 140), (90, 90, 95), (200, 160, 40)],
    dtype=np.float32,
)  # fmt: skip
_FACADE_COLOURS = np.array(
    [(190, 180, 160), (150, 145, 140), (120, 70, 55), (210, 205, 195), (95, 95, 100),
     (170, 150, 120), (130, 125, 115), (200, 170, 140), (80, 75, 70), (140, 150, 160)],
    dtype=np.float32,
)  # fmt: skip
_CLOTHES = np.array(
    [(20, 20, 25), (40, 45, 70), (60, 60, 60), (150, 30, 35), (200, 200, 195),
     (90, 70, 50), (30, 60, 110), (120, 120, 70), (180, 150, 110), (70, 30, 80)],
    dtype=np.float32,
)  # fmt: skip
_SKIN = np.array([(230, 190, 160), (200, 150, 115), (150, 100, 70), (95, 65, 45)], dtype=np.float32)


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 12.0) -> tuple:
    c = table[rng.integers(len(table))] + rng.normal(0.0, jitter, 3)
    return tuple(min(max(float(x), 0.0), 255.0) for x in c)


@dataclass
class _View:
    """Camera and canvas: what every drawing call needs."""

    img: np.ndarray  # HxWx3 float32 RGB, 0..255
    mask: np.ndarray  # HxW uint8 train ids
    horizon: float
    vx: float
    f: float

    def x(self, u: float, z: float) -> float:
        return self.vx + u * self.f / z

    def y(self, z: float, h: float = 0.0) -> float:
        return self.horizon + self.f * (1.0 - h) / z

    def pt(self, u: float, z: float, h: float = 0.0) -> tuple[float, float]:
        return self.x(u, z), self.y(z, h)

    # -- drawing: the same integer polygon goes to the mask and the image ------------------
    def poly(self, pts: list[tuple[float, float]], cls: int | None, colour: tuple) -> None:
        # Objects stand at depth >= ~1, so coordinates stay far inside int32 fixed point.
        p = np.floor(np.asarray(pts, dtype=np.float64) * _ONE + 0.5).astype(np.int32)
        if cls is not None:
            cv2.fillConvexPoly(self.mask, p, cls, cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(self.img, p, colour, cv2.LINE_8, _SHIFT)

    def rect(
        self, x0: float, y0: float, x1: float, y1: float, cls: int | None, colour: tuple
    ) -> None:
        # At least one pixel wide and tall, so distant thin things still exist in the mask.
        if x1 - x0 < 1.0:
            xc = (x0 + x1) / 2
            x0, x1 = xc - 0.5, xc + 0.5
        if y1 - y0 < 1.0:
            yc = (y0 + y1) / 2
            y0, y1 = yc - 0.5, yc + 0.5
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, colour)

    def disc(self, cx: float, cy: float, r: float, cls: int | None, colour: tuple) -> None:
        c = (round(cx * _ONE), round(cy * _ONE))
        if not (abs(c[0]) < 1 << 26 and abs(c[1]) < 1 << 26):
            return
        rad = max(round(r * _ONE), _ONE // 2)
        if cls is not None:
            cv2.circle(self.mask, c, rad, cls, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(self.img, c, rad, colour, -1, cv2.LINE_8, _SHIFT)

    def darken(self, pts: list[tuple[float, float]], factor: float) -> None:
        """Cast shadow: scale the image under a convex polygon (inside its bounding box only)."""
        p = np.asarray(pts, dtype=np.float64)
        h, w = self.mask.shape
        x0, y0 = np.floor(p.min(0)).astype(int)
        x1, y1 = np.ceil(p.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 >= x1 or y0 >= y1:
            return
        stencil = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        q = np.round((p - (x0, y0)) * _ONE).astype(np.int32)
        cv2.fillConvexPoly(stencil, q, 1, cv2.LINE_8, _SHIFT)
        roi = self.img[y0:y1, x0:x1]
        roi[stencil.astype(bool)] *= factor


# -- the static scene: ground, facades, fences, sky ------------------------------------------
# The static image is a map of material indices turned into colour by one cv2.LUT (3-channel
# numpy arithmetic on the whole frame is what would make rendering slow).
_M_PAINT = 12  # road marking
_M_DIRT = 13  # 13..15: terrain with more and more bare earth
_M_FACADE = 16  # 16..23: facade colours
_M_WINDOW = 24  # 24..27: window colours
_M_HAZE = 28  # 28: distant skyline, 29: distant tree line
_M_SKY = 32  # 32..159: sky gradient row band x cloud level
_SKY_ROWS, _SKY_CLOUDS = 32, 4


@dataclass
class _Street:
    road_l: float
    road_r: float
    lane_w: float
    n_lanes: int
    side_l: float  # outer edge of the left sidewalk
    side_r: float
    line_l: float  # building / hedge line
    line_r: float
    terrain_l: bool
    terrain_r: bool

    @property
    def lanes(self) -> tuple[float, ...]:
        return tuple(self.road_l + (i + 0.5) * self.lane_w for i in range(self.n_lanes))


def _street(rng: np.random.Generator) -> _Street:
    """A cross-section: lanes, sidewalks, optional terrain strips, building lines."""
    lane_w = rng.uniform(2.0, 2.6)
    n_lanes = int(rng.integers(2, 5))
    road_l = -(int(rng.integers(0, n_lanes)) + rng.uniform(0.3, 0.7)) * lane_w
    road_r = road_l + n_lanes * lane_w
    side_l, side_r = road_l - rng.uniform(1.0, 2.6), road_r + rng.uniform(1.0, 2.6)
    terrain_l, terrain_r = bool(rng.random() < 0.45), bool(rng.random() < 0.45)
    line_l = side_l - (rng.uniform(0.8, 3.0) if terrain_l else rng.uniform(0.0, 0.3))
    line_r = side_r + (rng.uniform(0.8, 3.0) if terrain_r else rng.uniform(0.0, 0.3))
    return _Street(
        road_l, road_r, lane_w, n_lanes, side_l, side_r, line_l, line_r, terrain_l, terrain_r
    )


def _frac(x: np.ndarray) -> np.ndarray:
    """x mod 1 (numpy's float remainder is several times slower)."""
    return x - np.floor(x)


def _segments(rng: np.random.Generator, z0: float, z1: float, length: tuple[float, float]):
    """Edges of consecutive runs along the street's depth (longer further away)."""
    edges = [z0]
    while edges[-1] < z1:
        edges.append(edges[-1] + rng.uniform(*length) * (0.6 + 0.1 * edges[-1] ** 0.5))
    return np.asarray(edges)


@dataclass
class _Canvas:
    """The static scene's per-pixel buffers and the ground's coordinates, which its layers
    (sky, skyline, ground, paint, facades, shadow, fence) draw into in turn."""

    rows: np.ndarray  # pixel-centre row, (h, 1)
    xs: np.ndarray  # pixel-centre column, (w,)
    g0: int  # first row wholly below the horizon
    z: np.ndarray  # depth of each ground row, (h - g0, 1)
    u: np.ndarray  # lateral position of each ground pixel, (h - g0, w)
    shade: np.ndarray  # multiplicative shading, (h, w)
    mat: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint8))  # materials


def _canvas(v: _View) -> _Canvas:
    h, w = v.mask.shape
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32) + 0.5
    g0 = min(int(np.floor(v.horizon)) + 1, h)
    z = v.f / (rows[g0:] - v.horizon)
    u = (xs[None, :] - v.vx) * (z / v.f)
    return _Canvas(rows, xs, g0, z, u, np.ones((h, w), dtype=np.float32))


def _draw_static(
    rng: np.random.Generator, v: _View, st: _Street, noise_lf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill v.mask; return the material map and a multiplicative shading map.

    The layers draw from `rng` in this order; the order is part of the dataset's content."""
    c = _canvas(v)
    _sky(rng, v, c, noise_lf)
    _skyline(rng, v, c)
    _ground(rng, v, st, c, noise_lf)
    _lane_paint(rng, v, st, c)
    heights_by_side = _facades(rng, v, st, c, noise_lf)
    _cast_shadow(rng, st, c, heights_by_side)
    _fence(rng, v, st, c)
    return c.mat, c.shade


def _sky(rng: np.random.Generator, v: _View, c: _Canvas, noise_lf: np.ndarray) -> None:
    """Sky: gradient bands by row, cloud level from smooth noise."""
    band = np.minimum(c.rows * (_SKY_ROWS / max(v.horizon, 1.0)), _SKY_ROWS - 1).astype(np.uint8)
    cloud = np.maximum(noise_lf * rng.uniform(0.5, 1.5), 0.0)
    cloud = np.minimum(cloud, _SKY_CLOUDS - 1, out=cloud).astype(np.uint8)
    c.mat = (_M_SKY + band * _SKY_CLOUDS) + cloud
    v.mask[:] = SKY


def _skyline(rng: np.random.Generator, v: _View, c: _Canvas) -> None:
    """Distant skyline or tree line, hazy, just above the horizon."""
    if rng.random() < 0.7:
        h, w = v.mask.shape
        edges = np.sort(rng.uniform(0, w, int(rng.integers(4, 14))))
        top = v.horizon - rng.uniform(0.01, 0.09, len(edges) + 1)[np.searchsorted(edges, c.xs)] * h
        far = rng.random() < 0.3
        y0 = max(int(top.min()), 0)
        sel = c.rows[y0 : c.g0] >= top[None, :]
        np.copyto(v.mask[y0 : c.g0], np.uint8(VEGETATION if far else BUILDING), where=sel)
        np.copyto(c.mat[y0 : c.g0], np.uint8(_M_HAZE + far), where=sel)


def _ground(
    rng: np.random.Generator, v: _View, st: _Street, c: _Canvas, noise_lf: np.ndarray
) -> None:
    """Ground: class by lateral position u at depth z; earth patches, paving tiles, kerbs."""
    z, u = c.z, c.u
    ground = v.mask[c.g0 :]
    ground[:] = ROAD
    ground[u < st.road_l] = SIDEWALK
    ground[u < st.side_l] = TERRAIN if st.terrain_l else SIDEWALK
    ground[u > st.road_r] = SIDEWALK
    ground[u > st.side_r] = TERRAIN if st.terrain_r else SIDEWALK
    gmat = c.mat[c.g0 :]
    gmat[:] = ground
    dirt = np.maximum(noise_lf[c.g0 :] * 2.0 + 1.0, 0.0)
    dirt = np.minimum(dirt, 3.0, out=dirt).astype(np.uint8)
    np.copyto(gmat, dirt + np.uint8(_M_DIRT - 1), where=(ground == TERRAIN) & (dirt > 0))
    gshade = c.shade[c.g0 :]
    fade = np.minimum(1.0, 6.0 / z)  # fine ground detail fades with distance (no aliasing)
    inside = (u > st.line_l) & (u < st.line_r)
    pavement = (ground == SIDEWALK) & inside
    tile = rng.uniform(0.4, 0.8)
    grid = (np.abs(_frac(u / tile) - 0.5) > 0.45) | (np.abs(_frac(z / tile) - 0.5) > 0.45)
    gshade -= (pavement & grid) * (0.18 * fade)
    gshade += (pavement & ((np.abs(u - st.road_l) < 0.1) | (np.abs(u - st.road_r) < 0.1))) * 0.25


def _lane_paint(rng: np.random.Generator, v: _View, st: _Street, c: _Canvas) -> None:
    """Lane paint: dashed separators, solid edge lines, sometimes a zebra crossing."""
    z, u = c.z, c.u
    on_road = v.mask[c.g0 :] == ROAD
    dashed = (z / rng.uniform(2.5, 5.0)) % 1.0 < 0.45
    paint = (np.abs(u - st.road_l - 0.25) < 0.06) | (np.abs(u - st.road_r + 0.25) < 0.06)
    for i in range(1, st.n_lanes):
        paint |= dashed & (np.abs(u - (st.road_l + i * st.lane_w)) < 0.07)
    if rng.random() < 0.35:
        paint |= (np.abs(z - rng.uniform(4.0, 14.0)) < 1.2) & (_frac(u / 0.45) < 0.5)
    np.copyto(c.mat[c.g0 :], np.uint8(_M_PAINT), where=paint & on_road)


def _facades(
    rng: np.random.Generator, v: _View, st: _Street, c: _Canvas, noise_lf: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Facades (or a hedge / tree wall) along both building lines, one height per segment.
    Returns each side's (segment edges, heights) for the shadows they cast."""
    w, f, hor, vx, rows = len(c.xs), v.f, v.horizon, v.vx, c.rows
    fz = np.ones(w, dtype=np.float32)  # depth of the facade seen in each column
    ftop = np.full(w, np.inf, dtype=np.float32)
    fbase = np.full(w, -np.inf, dtype=np.float32)
    fheight = np.zeros(w, dtype=np.float32)
    fcls = np.full(w, BUILDING, dtype=np.uint8)
    fmat = np.zeros(w, dtype=np.uint8)
    wmat = np.zeros(w, dtype=np.uint8)
    win_w = np.ones(w, dtype=np.float32)
    floor_h = np.ones(w, dtype=np.float32)
    z_end = rng.uniform(40.0, 160.0)
    heights_by_side = {}
    for side, line in (("l", st.line_l), ("r", st.line_r)):
        cls = BUILDING if rng.random() < 0.8 else VEGETATION
        sel = (c.xs < vx) if side == "l" else (c.xs > vx)
        zc = np.where(sel, line * f / np.where(sel, c.xs - vx, 1.0), np.inf)
        edges = _segments(rng, 0.5, z_end, (3.0, 12.0) if cls == BUILDING else (2.0, 6.0))
        n = len(edges)
        if cls == BUILDING:
            hb = rng.uniform(2.5, 14.0, n)
            hb[rng.random(n) < 0.12] = 0.0  # a gap between buildings
            seg_mat = _M_FACADE + rng.integers(0, 8, n)
        else:
            hb = rng.uniform(0.8, 3.5, n)
            seg_mat = np.full(n, VEGETATION)
        seg_win = _M_WINDOW + rng.integers(0, 4, n)
        seg_winw, seg_floor = rng.uniform(1.2, 2.4, n), rng.uniform(1.7, 2.4, n)
        seg = np.clip(np.searchsorted(edges, zc) - 1, 0, n - 1)
        ok = sel & (zc < z_end) & (hb[seg] > 0)
        fz[ok], fheight[ok], fcls[ok] = zc[ok], hb[seg][ok], cls
        fmat[ok], wmat[ok] = seg_mat[seg][ok], seg_win[seg][ok]
        win_w[ok], floor_h[ok] = seg_winw[seg][ok], seg_floor[seg][ok]
        heights_by_side[side] = (edges, hb if cls == BUILDING else hb * 0.5)
    ftop = np.where(fheight > 0, hor + f * (1 - fheight) / fz, ftop)
    fbase = np.where(fheight > 0, hor + f / fz, fbase)
    # Ragged top for hedges and tree walls.
    ftop -= (fcls == VEGETATION) * np.abs(noise_lf[0] * 0.6 + 0.4) * (0.6 * f / fz)
    fmask = (rows >= ftop[None, :]) & (rows < fbase[None, :])
    np.copyto(v.mask, fcls[None, :], where=fmask)
    np.copyto(c.mat, fmat[None, :], where=fmask)
    hgt = 1.0 - (rows - hor) * (fz / f)[None, :]  # height on the facade
    win = (
        fmask
        & (hgt > 1.3)
        & (hgt < fheight[None, :] - 0.6)
        & (_frac(hgt / floor_h[None, :]) > 0.35)
        & ((fcls == BUILDING) & ((fz / win_w) % 1.0 > 0.3))[None, :]
    )
    np.copyto(c.mat, wmat[None, :], where=win)
    return heights_by_side


def _cast_shadow(
    rng: np.random.Generator,
    st: _Street,
    c: _Canvas,
    heights_by_side: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """Cast shadow of the sunny side's facades on the ground (their own face is in shade too)."""
    sun_left = rng.random() < 0.5
    edges, hb = heights_by_side["l" if sun_left else "r"]
    length = 0.5 * hb[np.clip(np.searchsorted(edges, c.z[:, 0]) - 1, 0, len(hb) - 1)][:, None]
    dark = (c.u < st.line_l + length) if sun_left else (c.u > st.line_r - length)
    c.shade[c.g0 :] *= np.where(dark, np.float32(rng.uniform(0.45, 0.7)), np.float32(1.0))


def _fence(rng: np.random.Generator, v: _View, st: _Street, c: _Canvas) -> None:
    """A fence in front of part of one building line."""
    if rng.random() >= 0.55:
        return
    f, hor, vx, xs = v.f, v.horizon, v.vx, c.xs
    left = rng.random() < 0.5
    line = st.line_l + 0.05 if left else st.line_r - 0.05
    sel = (xs < vx - 1) if left else (xs > vx + 1)
    zc = line * f / np.where(sel, xs - vx, 1.0)
    za = rng.uniform(1.0, 10.0)
    sel &= (zc >= za) & (zc < za + rng.uniform(6.0, 40.0))
    zs = np.where(sel, zc, 1.0)
    top = np.where(sel, hor + f * (1 - rng.uniform(0.45, 0.9)) / zs, np.inf)
    fence = (c.rows >= top[None, :]) & (c.rows < np.where(sel, hor + f / zs, -np.inf)[None, :])
    v.mask[fence] = FENCE
    c.mat[fence] = FENCE
    slats = (zc / rng.uniform(0.15, 0.4)) % 1.0 < 0.3
    c.shade -= (fence & slats[None, :]) * np.float32(0.25)


def _palette(rng: np.random.Generator) -> np.ndarray:
    """Per-scene colour of every material: 256x1x3 float32 for cv2.LUT."""
    pal = np.zeros((256, 3), dtype=np.float32)
    grey = rng.uniform(75, 130)
    pal[ROAD] = (grey, grey, grey + rng.uniform(-4, 8))
    side = rng.uniform(110, 175)
    red_pavers = rng.random() < 0.3
    pal[SIDEWALK] = (
        (side * 1.05, side * 0.72, side * 0.62) if red_pavers else (side, side * 0.97, side * 0.93)
    )
    grass = np.array([rng.uniform(90, 140), rng.uniform(120, 160), rng.uniform(60, 90)])
    pal[TERRAIN] = grass
    earth = np.array([150, 125, 95]) + rng.normal(0, 10, 3)
    for k in range(3):
        pal[_M_DIRT + k] = grass + (earth - grass) * (k + 1) / 4
    pal[VEGETATION] = (rng.uniform(45, 85), rng.uniform(85, 125), rng.uniform(30, 60))
    pal[FENCE] = _pick(rng, np.array([(150, 130, 100), (110, 110, 105), (70, 90, 70)]))
    pal[_M_PAINT] = rng.uniform(190, 235)
    for k in range(8):
        pal[_M_FACADE + k] = _pick(rng, _FACADE_COLOURS, 10)
    for k in range(4):
        pal[_M_WINDOW + k] = np.array([45, 55, 70]) + rng.uniform(-20, 60) * np.array(
            [1.0, 1.0, 1.1]
        )
    sky_top = np.array(
        _pick(rng, np.array([(70, 120, 190), (150, 160, 175), (110, 150, 200), (190, 170, 160)]), 8)
    )
    sky_hor = np.clip(sky_top + rng.uniform(30, 80), 0, 255)
    pal[_M_HAZE] = pal[_M_FACADE] * 0.45 + sky_hor * 0.55
    pal[_M_HAZE + 1] = pal[VEGETATION] * 0.45 + sky_hor * 0.55
    t = (np.arange(_SKY_ROWS) + 0.5)[:, None, None] / _SKY_ROWS
    c = (np.arange(_SKY_CLOUDS) / _SKY_CLOUDS * rng.uniform(0.5, 0.9))[None, :, None]
    sky = (sky_top * (1 - t) + sky_hor * t) * (1 - c) + 235.0 * c
    pal[_M_SKY : _M_SKY + _SKY_ROWS * _SKY_CLOUDS] = sky.reshape(-1, 3)
    return pal.reshape(256, 1, 3)


# -- objects, drawn far to near ---------------------------------------------------------------
def _car(rng: np.random.Generator, v: _View, u: float, z: float, facing_away: bool) -> None:
    cw, ch, cl = rng.uniform(1.15, 1.35), rng.uniform(0.9, 1.25), rng.uniform(2.6, 3.3)
    body = _pick(rng, _CAR_COLOURS, 10)
    dark = tuple(c * 0.75 for c in body)
    glass = (40.0 + rng.uniform(0, 30), 48.0 + rng.uniform(0, 30), 58.0 + rng.uniform(0, 30))
    tyre = (22.0, 22.0, 24.0)
    lo, ri = u - cw / 2, u + cw / 2
    belt = ch * rng.uniform(0.5, 0.6)
    inset = cw * 0.12
    v.darken(
        [
            v.pt(lo - 0.1, z - 0.1),
            v.pt(ri + 0.1, z - 0.1),
            v.pt(ri + 0.1, z + cl),
            v.pt(lo - 0.1, z + cl),
        ],
        0.45,
    )
    # Side face seen when the car is off-centre.
    s = lo if lo > 0 else (ri if ri < 0 else None)
    if s is not None:
        si = s + (inset if s == lo else -inset)
        v.poly(
            [v.pt(s, z, 0.1), v.pt(s, z + cl, 0.1), v.pt(s, z + cl, belt), v.pt(s, z, belt)],
            CAR,
            dark,
        )
        v.poly([v.pt(si, z + 0.15 * cl, belt), v.pt(si, z + 0.8 * cl, belt),
                v.pt(si, z + 0.7 * cl, ch), v.pt(si, z + 0.3 * cl, ch)], CAR, glass)  # fmt: skip
        for zw in (z + 0.18 * cl, z + 0.8 * cl):
            x0, y0 = v.pt(s, zw - 0.3, 0.35)
            x1, y1 = v.pt(s, zw + 0.3, 0.0)
            v.poly([(x0, y0), (x1, v.y(zw + 0.3, 0.35)), (x1, y1), (x0, v.y(zw - 0.3))], CAR, tyre)
    if ch < 1.0:  # roof visible from above
        v.poly([v.pt(lo + inset, z + 0.3 * cl, ch), v.pt(ri - inset, z + 0.3 * cl, ch),
                v.pt(ri - inset, z + 0.7 * cl, ch), v.pt(lo + inset, z + 0.7 * cl, ch)], CAR, body)  # fmt: skip
    # Near face: body, cabin, glass, lights, wheels.
    xl, xr = v.x(lo, z), v.x(ri, z)
    v.rect(xl, v.y(z, belt), xr, v.y(z, 0.12), CAR, body)
    v.poly([v.pt(lo + inset * 0.5, z, belt), v.pt(ri - inset * 0.5, z, belt),
            v.pt(ri - inset, z, ch), v.pt(lo + inset, z, ch)], CAR, body)  # fmt: skip
    v.poly([v.pt(lo + inset, z, belt + 0.05), v.pt(ri - inset, z, belt + 0.05),
            v.pt(ri - inset * 1.3, z, ch - 0.06), v.pt(lo + inset * 1.3, z, ch - 0.06)], None, glass)  # fmt: skip
    lamp = (200.0, 20.0, 20.0) if facing_away else (235.0, 235.0, 215.0)
    for a, b in ((lo + 0.05, lo + 0.3), (ri - 0.3, ri - 0.05)):
        v.rect(v.x(a, z), v.y(z, belt - 0.05), v.x(b, z), v.y(z, belt - 0.2), None, lamp)
    v.rect(
        v.x(u - 0.2, z), v.y(z, 0.35), v.x(u + 0.2, z), v.y(z, 0.24), None, (225.0, 225.0, 220.0)
    )
    for a, b in ((lo + 0.05, lo + 0.3), (ri - 0.3, ri - 0.05)):
        v.rect(v.x(a, z), v.y(z, 0.14), v.x(b, z), v.y(z, 0.0), CAR, tyre)


def _person(rng: np.random.Generator, v: _View, u: float, z: float) -> None:
    hp = rng.uniform(1.0, 1.28)
    top, bottom = _pick(rng, _CLOTHES, 15), _pick(rng, _CLOTHES, 15)
    skin = _pick(rng, _SKIN, 8)
    sw = rng.uniform(0.26, 0.34) * hp  # shoulder width
    stride = rng.uniform(-0.18, 0.18)
    hip, shoulder = 0.5 * hp, 0.82 * hp
    v.darken(
        [
            v.pt(u - 0.2, z - 0.1),
            v.pt(u + 0.35, z - 0.1),
            v.pt(u + 0.35, z + 0.3),
            v.pt(u - 0.2, z + 0.3),
        ],
        0.6,
    )
    lw = 0.06 * hp
    for side in (-1, 1):  # legs
        foot = u + side * (0.05 + stride * side * 0.5)
        hx = u + side * 0.05
        v.poly(
            [
                v.pt(hx - lw, z, hip),
                v.pt(hx + lw, z, hip),
                v.pt(foot + lw * 0.8, z),
                v.pt(foot - lw * 0.8, z),
            ],
            PERSON,
            bottom,
        )
    for side in (-1, 1):  # arms
        sx = u + side * sw / 2
        hand = sx + side * 0.03 - stride * side * 0.4
        aw = 0.04 * hp
        v.poly(
            [
                v.pt(sx - aw, z, shoulder),
                v.pt(sx + aw, z, shoulder),
                v.pt(hand + aw, z, hip + 0.03),
                v.pt(hand - aw, z, hip + 0.03),
            ],
            PERSON,
            top,
        )
    v.poly(
        [
            v.pt(u - sw / 2, z, shoulder),
            v.pt(u + sw / 2, z, shoulder),
            v.pt(u + sw * 0.38, z, hip - 0.04),
            v.pt(u - sw * 0.38, z, hip - 0.04),
        ],
        PERSON,
        top,
    )
    v.rect(
        v.x(u - 0.025 * hp, z),
        v.y(z, 0.88 * hp),
        v.x(u + 0.025 * hp, z),
        v.y(z, shoulder),
        PERSON,
        skin,
    )
    v.disc(v.x(u, z), v.y(z, 0.93 * hp), 0.07 * hp * v.f / z, PERSON, skin)


def _traffic_light(rng: np.random.Generator, v: _View, u: float, z: float, h_top: float) -> None:
    bw, bh = rng.uniform(0.18, 0.26), rng.uniform(0.55, 0.75)
    housing = (30.0, 30.0, 32.0) if rng.random() < 0.7 else (170.0, 150.0, 40.0)
    v.rect(
        v.x(u - bw / 2, z), v.y(z, h_top), v.x(u + bw / 2, z), v.y(z, h_top - bh), LIGHT, housing
    )
    lit = int(rng.integers(3))
    on = ((255.0, 50.0, 30.0), (255.0, 190.0, 40.0), (60.0, 255.0, 140.0))
    for k in range(3):
        colour = on[k] if k == lit else (55.0, 55.0, 50.0)
        hk = h_top - bh * (k + 0.5) / 3
        v.disc(v.x(u, z), v.y(z, hk), bw * 0.32 * v.f / z, None, colour)


def _sign(rng: np.random.Generator, v: _View, u: float, z: float, hc: float) -> None:
    kind = int(rng.integers(4))
    s = rng.uniform(0.22, 0.35)
    x, y, r = v.x(u, z), v.y(z, hc), s * v.f / z
    red, white, blue = (200.0, 30.0, 35.0), (235.0, 235.0, 230.0), (30.0, 70.0, 170.0)
    if kind == 0:  # prohibition: red ring, white inside
        v.disc(x, y, r, SIGN, red)
        v.disc(x, y, r * 0.72, None, white)
    elif kind == 1:  # mandatory: blue disc
        v.disc(x, y, r, SIGN, blue)
        v.rect(x - r * 0.5, y - r * 0.12, x + r * 0.5, y + r * 0.12, None, white)
    elif kind == 2:  # warning triangle
        v.poly([(x, y - r), (x + r * 1.05, y + r * 0.8), (x - r * 1.05, y + r * 0.8)], SIGN, red)
        v.poly(
            [(x, y - r * 0.5), (x + r * 0.62, y + r * 0.55), (x - r * 0.62, y + r * 0.55)],
            None,
            white,
        )
    else:  # information panel
        colour = _pick(rng, np.array([blue, (30, 120, 60), white, (240, 200, 40)]), 6)
        v.rect(x - r * 1.2, y - r * 0.8, x + r * 1.2, y + r * 0.8, SIGN, colour)


def _pole(rng: np.random.Generator, v: _View, st: _Street, u: float, z: float) -> None:
    hp = rng.uniform(2.2, 5.0)
    pw = rng.uniform(0.06, 0.11)
    colour = _pick(rng, np.array([(120, 120, 118), (60, 62, 60), (40, 60, 45), (150, 150, 145)]), 8)
    v.rect(v.x(u - pw / 2, z), v.y(z, hp), v.x(u + pw / 2, z), v.y(z), POLE, colour)
    kind = rng.random()
    toward = 1.0 if u < (st.road_l + st.road_r) / 2 else -1.0  # towards the road's middle
    if kind < 0.35:
        _sign(rng, v, u, z - 0.05, rng.uniform(1.5, min(hp, 2.6) - 0.05))
        if rng.random() < 0.3:
            _sign(rng, v, u, z - 0.05, rng.uniform(1.0, 1.4))
    elif kind < 0.6:
        _traffic_light(rng, v, u + toward * 0.15, z - 0.05, min(hp, rng.uniform(2.0, 2.6)))
    elif kind < 0.75:  # an arm across the road, often with a light hanging from it
        reach = rng.uniform(1.5, 4.0)
        ua, ub = sorted((u, u + toward * reach))
        v.rect(v.x(ua, z), v.y(z, hp), v.x(ub, z), v.y(z, hp - pw), POLE, colour)
        if rng.random() < 0.7:
            _traffic_light(rng, v, u + toward * reach * 0.8, z - 0.05, hp - pw)


def _tree(rng: np.random.Generator, v: _View, u: float, z: float) -> None:
    ht = rng.uniform(1.0, 2.4)
    tw = rng.uniform(0.1, 0.22)
    trunk = _pick(rng, np.array([(90, 70, 55), (110, 100, 90), (70, 60, 50)]), 8)
    v.rect(v.x(u - tw / 2, z), v.y(z, ht + 0.3), v.x(u + tw / 2, z), v.y(z), VEGETATION, trunk)
    rc = rng.uniform(0.8, 2.0)
    base = np.array([rng.uniform(40, 90), rng.uniform(80, 130), rng.uniform(25, 60)])
    for _ in range(int(rng.integers(4, 9))):
        du, dh = rng.uniform(-0.7, 0.7, 2) * rc
        k = rng.uniform(0.75, 1.2)
        colour = tuple(min(float(c) * k, 255.0) for c in base)
        rad = rc * rng.uniform(0.45, 0.8) * v.f / z
        v.disc(v.x(u + du, z), v.y(z, ht + rc * 0.8 + dh), rad, VEGETATION, colour)


def _bush(rng: np.random.Generator, v: _View, u: float, z: float) -> None:
    size = rng.uniform(0.3, 0.8)
    colour = (rng.uniform(40, 80), rng.uniform(80, 120), rng.uniform(25, 55))
    for _ in range(3):
        du = rng.uniform(-0.5, 0.5) * size
        v.disc(v.x(u + du, z), v.y(z, size * 0.5), size * 0.6 * v.f / z, VEGETATION, colour)


def _place_objects(
    rng: np.random.Generator, v: _View, st: _Street
) -> list[tuple[float, Callable[[], None]]]:
    """(depth, draw) pairs for everything standing on the street."""
    z_near = v.f / (v.mask.shape[0] - v.horizon) * 0.95  # just below the bottom edge
    objs: list[tuple[float, Callable[[], None]]] = []

    def depth(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(max(lo, z_near)), np.log(hi))))

    def add(z: float, fn, *args) -> None:
        objs.append((z, lambda: fn(rng, v, *args)))

    mid = (st.road_l + st.road_r) / 2
    for _ in range(int(rng.integers(1, 9))):  # traffic in lanes
        lane = st.lanes[int(rng.integers(len(st.lanes)))]
        z = depth(z_near + 1.0, 60.0)
        add(z, _car, lane + rng.uniform(-0.25, 0.25), z, lane >= mid or rng.random() < 0.3)
    for side, edge in ((-1, st.road_l), (1, st.road_r)):  # parked cars
        for _ in range(int(rng.integers(0, 5))):
            z = depth(z_near + 0.5, 45.0)
            add(z, _car, edge - side * rng.uniform(0.7, 0.9), z, True)
    sidewalks = ((st.side_l, st.road_l), (st.road_r, st.side_r))
    for _ in range(int(rng.integers(1, 11))):  # pedestrians, a few crossing the road
        if rng.random() < 0.15:
            lo, hi = st.road_l, st.road_r
        else:
            lo, hi = sidewalks[int(rng.integers(2))]
        z = depth(z_near + 0.3, 40.0)
        add(z, _person, rng.uniform(lo + 0.2, hi - 0.2), z)
    for _ in range(int(rng.integers(2, 9))):  # poles near the curb or the building line
        lo, hi = sidewalks[int(rng.integers(2))]
        near_curb = rng.random() < 0.7
        if lo == st.side_l:
            u = hi - 0.3 if near_curb else lo + 0.2
        else:
            u = lo + 0.3 if near_curb else hi - 0.2
        z = depth(z_near + 0.5, 50.0)
        objs.append((z, lambda u=u, z=z: _pole(rng, v, st, u, z)))
    for side, (has_terrain, a, b) in enumerate(
        ((st.terrain_l, st.line_l, st.side_l), (st.terrain_r, st.side_r, st.line_r))
    ):
        lo, hi = (a, b) if a < b else (b, a)
        if not has_terrain:  # trees stand in pits at the sidewalk's outer edge
            lo, hi = (
                (st.side_l + 0.2, st.side_l + 0.5)
                if side == 0
                else (st.side_r - 0.5, st.side_r - 0.2)
            )
        for _ in range(int(rng.integers(0, 6))):
            z = depth(z_near + 1.0, 60.0)
            add(z, _tree, rng.uniform(lo + 0.1, max(hi - 0.1, lo + 0.11)), z)
        if has_terrain:
            for _ in range(int(rng.integers(0, 4))):
                z = depth(z_near + 0.5, 40.0)
                add(z, _bush, rng.uniform(lo + 0.1, max(hi - 0.3, lo + 0.11)), z)
    objs.sort(key=lambda o: -o[0])
    return objs


def _finish(
    rng: np.random.Generator, noise: np.random.Generator, v: _View, noise_mid: np.ndarray
) -> np.ndarray:
    """Lens blur, per-class texture with sensor grain, exposure and colour cast -> uint8 RGB."""
    h, w = v.mask.shape
    sigma = rng.uniform(0.2, 1.1) * (w / 512)
    img = cv2.GaussianBlur(v.img, (0, 0), sigma) if sigma > 0.3 else v.img
    # Uniform noise from raw bytes: far cheaper than standard_normal, just as good here.
    grain = np.frombuffer(noise.bytes(h * w), dtype=np.uint8).reshape(h, w).astype(np.float32)
    grain -= 127.5
    grain *= cv2.LUT(v.mask, _TEX_FINE) + np.float32(rng.uniform(0.005, 0.03))
    grain *= np.float32(1.0 / 73.6)  # unit variance before the per-class strength
    mod = cv2.LUT(v.mask, _TEX_MID)
    mod *= noise_mid
    mod += grain
    mod += 1.0
    np.maximum(mod, 0.0, out=mod)
    img *= mod[..., None]
    # Exposure, gamma and colour cast as one per-channel table on the uint8 image.
    x = np.arange(256, dtype=np.float64)[:, None] / 255.0
    gain = rng.uniform(0.6, 1.3) * rng.uniform(0.9, 1.1, 3)[None, :]
    tone = np.clip(255.0 * gain * x ** rng.uniform(0.8, 1.25), 0, 255).astype(np.uint8)
    return cv2.LUT(cv2.convertScaleAbs(img), tone.reshape(256, 1, 3))


def render_street(seed: int, split: str, index: int, size: tuple[int, int]) -> Sample:
    """One (image HxWx3 uint8 RGB, mask HxW uint8) street scene, a pure function of its key.

    The scene (layout, objects, colours) comes from one random stream and pixel-level noise
    from another, so the same key gives the same scene at any size.
    """
    h, w = size
    key = np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(index)])
    rng, noise = (np.random.default_rng(s) for s in key.spawn(2))
    v = _View(
        img=np.empty((h, w, 3), dtype=np.float32),
        mask=np.empty((h, w), dtype=np.uint8),
        horizon=h * rng.uniform(0.36, 0.5),
        vx=w * rng.uniform(0.32, 0.68),
        f=w * rng.uniform(0.8, 1.2),
    )
    # Smooth fields (clouds, earth patches, hedge tops) on a fixed grid: size-independent.
    noise_lf = cv2.resize(
        rng.standard_normal((10, 18), dtype=np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    noise_mid = cv2.resize(
        noise.standard_normal((h // 5 + 2, w // 5 + 2), dtype=np.float32),
        (w, h),
        interpolation=cv2.INTER_LINEAR,
    )
    st = _street(rng)
    mat, shade = _draw_static(rng, v, st, noise_lf)
    v.img = cv2.LUT(cv2.merge((mat, mat, mat)), _palette(rng))
    v.img *= shade[..., None]
    for _, draw in _place_objects(rng, v, st):
        draw()
    return _finish(rng, noise, v, noise_mid), v.mask


class SyntheticDataset(SegDataset):
    """`synthetic[:size=HxW,train=N,val=N,seed=N]`: street scenes rendered on the fly."""

    def __init__(
        self,
        split: str,
        size: tuple[int, int] = SYNTHETIC_DEFAULTS["size"],
        train: int = SYNTHETIC_DEFAULTS["train"],
        val: int = SYNTHETIC_DEFAULTS["val"],
        seed: int = SYNTHETIC_DEFAULTS["seed"],
        transform: Transform | None = None,
    ) -> None:
        if split not in SPLIT_CODES:
            raise SegkdError(f"synthetic: unknown split {split!r} (expected train or val)")
        self.split, self.size, self.seed = split, (int(size[0]), int(size[1])), int(seed)
        self.count = int(train if split == "train" else val)
        self.name = f"synthetic/{split}"
        self.labels = SYNTHETIC
        self.transform = transform

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> Sample:
        return render_street(self.seed, self.split, index, self.size)

    def sample_id(self, index: int) -> str:
        return str(Path(self.split) / f"{index:06d}")
