"""A cartoon face driven by ``arkit58`` motion: pure numpy geometry, drawn with Pillow.

The head is an ellipsoid with features placed on its surface (eyes with lids and irises,
brows, nose, lips, cheeks, ears, hair). A frame's blendshapes move the features in the face
plane; its rotation turns the whole head in 3-D about a pivot in the neck, and the result is
projected orthographically (head translation shifts and scales it). Every feature is a
polygon or a polyline, so one frame costs a few dozen Pillow draw calls (about a millisecond).

Conventions (face units: the head's half-height is 1; x to the viewer's right, y up, z toward
the viewer):

* ``headPitch`` > 0 tips the head down (a nod goes down and back up), ``headYaw`` > 0 turns the
  nose toward the viewer's right, ``headRoll`` > 0 tilts the head counter-clockwise on screen.
* ``...Left`` blendshapes act on the subject's left, which is on the viewer's right.
* ``headX``/``headY`` (metres) shift the head on screen, ``headZ`` > 0 (toward the camera)
  enlarges it; 0.12 m is one face unit.

Only the geometry (:func:`face_shapes`) knows about blendshapes; :func:`draw_face` and
:class:`FaceRenderer` turn shapes into pixels.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from realm.motion import ARKIT_BLENDSHAPES

#: Column of every arkit58 channel by name.
CH = {name: i for i, name in enumerate(ARKIT_BLENDSHAPES)}
PITCH, YAW, ROLL, TX, TY, TZ = 52, 53, 54, 55, 56, 57

#: Semi-axes of the head ellipsoid (x, y, z) in face units.
HEAD = np.array([0.80, 1.0, 0.85])
#: The head rotates about this point (in the neck), so a nod moves the face down, not in place.
PIVOT = np.array([0.0, -0.95, -0.25])
#: Metres per face unit (ARKit head translation -> screen).
METRES_PER_UNIT = 0.12

SKIN = (238, 203, 173)
SKIN_DARK = (205, 160, 130)
OUTLINE = (96, 62, 48)
HAIR = (88, 60, 42)
LIP = (196, 92, 96)
MOUTH = (70, 22, 30)
TEETH = (250, 248, 240)
WHITE = (252, 252, 252)
IRIS = (70, 110, 150)
PUPIL = (20, 20, 24)
BROW = (80, 52, 38)
CHEEK = (240, 160, 150)
SHIRT = (92, 120, 168)
TONGUE = (220, 110, 120)

#: Every colour a shape uses, by index: the page (realm.web) gets this table once and each shape
#: names its fill and outline by position in it (-1: none).
PALETTE = (SKIN, SKIN_DARK, OUTLINE, HAIR, LIP, MOUTH, TEETH, WHITE, IRIS, PUPIL, BROW, CHEEK, SHIRT, TONGUE)
#: The face's place in a drawing box (x0, y0, w, h): centre at (x0 + w CENTRE[0], y0 + h CENTRE[1]),
#: FIT[0] face units across the width or FIT[1] down the height, whichever is smaller.
CENTRE, FIT = (0.5, 0.40), (2.6, 3.1)
_PALETTE_INDEX = {c: i for i, c in enumerate(PALETTE)}
#: Face units -> integers in the compact encoding of :func:`encode_shapes`.
UNITS = 1000


@dataclass
class Shape:
    """One drawable: a filled ``polygon``, an open ``line`` or a filled ``ellipse`` (via polygon).

    ``points`` (N, 2) are projected face units (y up); ``width`` is in face units.
    """

    kind: str
    points: np.ndarray
    fill: tuple[int, int, int] | None = None
    outline: tuple[int, int, int] | None = None
    width: float = 0.0


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """3x3 rotation: pitch about x (positive tips the face down), then yaw about y, then roll about z."""
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # (0, 0, 1) -> (0, -sin p, cos p): down
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # (0, 0, 1) -> (sin y, 0, ...): right
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def on_surface(xy: np.ndarray, lift: float | np.ndarray = 0.0, scale: np.ndarray = HEAD) -> np.ndarray:
    """Face-plane points (N, 2) -> 3-D points (N, 3) on the front of the ellipsoid (+ ``lift`` in z)."""
    xy = np.asarray(xy, dtype=float)
    a, b, c = scale
    r = 1.0 - (xy[:, 0] / a) ** 2 - (xy[:, 1] / b) ** 2
    z = c * np.sqrt(np.clip(r, 0.0, None)) + lift
    return np.column_stack([xy, z])


@cache
def _lin(a: float, b: float, n: int, endpoint: bool = True) -> np.ndarray:
    """``np.linspace``, computed once per arguments (read-only): the face asks for the same ones every frame."""
    out = np.linspace(a, b, n, endpoint=endpoint)
    out.flags.writeable = False
    return out


@cache
def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of n angles round the circle (read-only, computed once per n)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    c.flags.writeable = s.flags.writeable = False
    return c, s


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    c, s = _circle(n)
    return np.column_stack([cx + rx * c, cy + ry * s])


class _Pose:
    """Rotation about the pivot, then screen shift/scale from translation; visibility by normals."""

    def __init__(self, frame: np.ndarray):
        self.R = rotation_matrix(float(frame[PITCH]), float(frame[YAW]), float(frame[ROLL]))
        self.shift = np.array([frame[TX], frame[TY]]) / METRES_PER_UNIT
        self.scale = float(np.clip(1.0 + frame[TZ] / 0.6, 0.6, 1.6))

    def points(self, p3: np.ndarray) -> np.ndarray:
        """3-D head points (N, 3) -> projected 2-D points (N, 2)."""
        q = (p3 - PIVOT) @ self.R.T + PIVOT
        return (q[:, :2] + self.shift) * self.scale

    def facing(self, p3: np.ndarray, scale: np.ndarray = HEAD) -> float:
        """Mean z of the rotated ellipsoid normals at ``p3``: > 0 when the patch faces the viewer."""
        n = p3 / scale**2
        n = n / np.linalg.norm(n, axis=1, keepdims=True)
        return float((n @ self.R.T)[:, 2].mean())

    def ellipsoid(self, centre: np.ndarray, axes: np.ndarray, n: int = 48) -> np.ndarray:
        """Projected silhouette (n, 2) of an ellipsoid with ``centre`` and semi-axes ``axes``."""
        c2 = self.points(np.asarray(centre, float)[None])[0]
        a = (self.R @ np.diag(axes))[:2] * self.scale  # (2, 3): the ellipse is {a u : |u| = 1}
        s = a @ a.T
        w, v = np.linalg.eigh(s)
        L = v @ np.diag(np.sqrt(np.clip(w, 0, None)))
        return c2 + np.column_stack(_circle(n)) @ L.T


def _hairline(x: np.ndarray) -> np.ndarray:
    """Height of the front hairline at face-plane ``x`` (kept inside the head's outline)."""
    top = HEAD[1] * np.sqrt(np.clip(1 - (x / HEAD[0]) ** 2, 0, 1))
    return np.minimum(0.60 + 0.22 * (x / 0.7) ** 2, 0.97 * top)


def _hair_cap(pose: _Pose) -> np.ndarray:
    """Projected outline of the hair: the visible front hairline, closed by the silhouette's top arc."""
    hx = _lin(-0.78, 0.78, 25)
    front = on_surface(np.column_stack([hx, _hairline(hx)]))
    n = front / HEAD**2
    facing = (n @ pose.R.T)[:, 2] > 0
    front2 = pose.points(front[facing]) if facing.any() else np.zeros((0, 2))
    # the rim (contour generator) of the ellipsoid seen along the view direction, in head coordinates
    d = pose.R.T @ np.array([0.0, 0.0, 1.0])
    m = d / HEAD
    m /= np.linalg.norm(m)
    e1 = np.cross(m, [1.0, 0.0, 0.0] if abs(m[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(m, e1)
    cos, sin = _circle(96)
    rim = (np.outer(cos, e1) + np.outer(sin, e2)) * HEAD
    above = rim[:, 1] > np.where(rim[:, 2] > 0, _hairline(rim[:, 0]), 0.45)
    rim2 = pose.points(rim[above])
    # screen "right" in head space, to order both curves left to right
    right = pose.R[0]
    front2 = front2[np.argsort(front[facing] @ right)] if len(front2) else front2
    rim2 = rim2[np.argsort(-(rim[above] @ right))]
    return np.vstack([front2, rim2])


def face_shapes(frame: np.ndarray, pose_only: bool = False) -> list[Shape]:
    """The drawables of one arkit58 frame (58,), back to front.

    ``pose_only`` draws a neutral face that follows only the head rotation and translation
    (used for motion spaces whose expression coefficients have no blendshape meaning).
    """
    f = np.asarray(frame, dtype=float)
    if f.shape != (58,):
        raise ValueError(f"face_shapes expects one arkit58 frame of 58 values, got shape {f.shape}")
    pose = _Pose(f)
    bs = np.zeros(52) if pose_only else np.clip(f[:52], 0.0, 1.0)
    g = {name: float(bs[i]) for name, i in CH.items()}
    shapes: list[Shape] = []

    # body: shoulders and neck do not rotate with the head
    shoulders = _ellipse(0.0, -2.05, 1.45, 0.75, 40)
    shapes.append(Shape("polygon", shoulders, SHIRT, OUTLINE, 0.02))
    neck = np.array([[-0.28, -1.45], [0.28, -1.45], [0.26, -0.5], [-0.26, -0.5]])
    shapes.append(Shape("polygon", neck, SKIN_DARK, OUTLINE, 0.02))

    # hair behind the head (an ellipsoid shifted up and back), ears, then the head itself
    shapes.append(Shape("polygon", pose.ellipsoid(np.array([0.0, 0.13, -0.12]), HEAD * [1.04, 0.98, 1.0]),
                        HAIR, OUTLINE, 0.015))  # fmt: skip
    for side in (-1, 1):
        cos, sin = _circle(16)
        ear = np.column_stack([side * (HEAD[0] - 0.04 + 0.12 * (0.5 + 0.5 * cos)), 0.02 + 0.17 * sin,
                               -0.1 + 0.06 * cos])  # fmt: skip
        shapes.append(Shape("polygon", pose.points(ear), SKIN_DARK, OUTLINE, 0.015))
    puff = g["cheekPuff"]
    if puff > 0.02:  # puffed cheeks bulge out of the silhouette
        for side in (-1, 1):
            c3 = np.array([[side * 0.56, -0.42, 0.35]])
            pts = pose.points(c3)[0]
            r = 0.12 + 0.16 * puff
            shapes.append(Shape("polygon", _ellipse(pts[0], pts[1], r * pose.scale, r * 1.1 * pose.scale), SKIN, OUTLINE, 0.02))
    shapes.append(Shape("polygon", pose.ellipsoid(np.zeros(3), HEAD), SKIN, OUTLINE, 0.02))

    on_face: list[tuple[int, np.ndarray, np.ndarray]] = []  # (index in shapes, face-plane points, lift)

    def surf(xy, fill=None, outline=None, width=0.0, kind="polygon", lift=0.0) -> None:
        """A shape on the head's surface: placed (and dropped where it faces away) in one go at the end."""
        xy = np.asarray(xy, float)
        on_face.append((len(shapes), xy, np.broadcast_to(np.asarray(lift, float), len(xy))))
        shapes.append(Shape(kind, xy, fill, outline, width))

    # hair cap: the front hairline, closed over the top of the head by the visible rim
    shapes.append(Shape("polygon", _hair_cap(pose), HAIR))

    # cheeks: squint raises them, puff enlarges them
    for side, name in ((1, "Left"), (-1, "Right")):
        sq = g[f"cheekSquint{name}"]
        surf(_ellipse(side * 0.45, -0.22 + 0.06 * sq, 0.11 * (1 + 0.5 * puff), 0.07 * (1 + 0.5 * puff) * (1 + 0.3 * sq), 16),
             CHEEK)  # fmt: skip

    # eyes: white between the lids, iris and pupil clipped to the opening, lash line, crease
    u = _lin(-1, 1, 17)
    for side, name in ((1, "Left"), (-1, "Right")):
        cx, cy, ew = side * 0.30, 0.16, 0.15
        blink, wide, squint = g[f"eyeBlink{name}"], g[f"eyeWide{name}"], g[f"eyeSquint{name}"]
        open_ = (1 - blink) * (1 + 0.8 * wide) * (1 - 0.4 * squint)
        h_up = 0.075 * open_
        h_lo = 0.045 * (1 - blink) * (1 - 0.5 * squint - 0.3 * g[f"cheekSquint{name}"]) * (1 + 0.3 * wide)
        mid = cy - 0.012 * blink  # closed lids meet a little below the centre
        xs = cx + ew * u
        upper = mid + h_up * (1 - u**2) ** 0.8 + 0.01 * side * u * (1 - u**2)
        lower = mid - h_lo * (1 - u**2)
        if open_ > 0.02:
            surf(np.vstack([np.column_stack([xs, upper]), np.column_stack([xs, lower])[::-1]]), WHITE)
            look_x = g[f"eyeLookOut{name}"] - g[f"eyeLookIn{name}"]
            look_y = g[f"eyeLookUp{name}"] - g[f"eyeLookDown{name}"]
            ix, iy = cx + side * 0.07 * look_x, cy + 0.04 * look_y
            for r, col in ((0.058, IRIS), (0.027, PUPIL)):
                circ = _ellipse(ix, iy, r, r, 20)
                circ[:, 0] = np.clip(circ[:, 0], cx - ew, cx + ew)
                top_at = np.interp(circ[:, 0], xs, upper)
                bot_at = np.interp(circ[:, 0], xs, lower)
                circ[:, 1] = np.clip(circ[:, 1], bot_at, top_at)
                surf(circ, col)
        surf(np.column_stack([xs, upper]), None, OUTLINE, 0.028, kind="line")
        surf(np.column_stack([xs, lower]), None, OUTLINE, 0.010, kind="line")
        crease = mid + h_up + 0.035 + 0.02 * wide
        cu = u[3:-3]
        surf(np.column_stack([cx + ew * 0.95 * cu, crease + 0.02 * (1 - cu**2) - 0.02]), None, SKIN_DARK, 0.01, kind="line")

    # brows: inner/outer raise, lowering pulls the inner end down and in
    v = _lin(0, 1, 9)  # 0 = inner end, 1 = outer end
    for side, name in ((1, "Left"), (-1, "Right")):
        down = g[f"browDown{name}"]
        x = side * (0.12 + 0.36 * v - 0.03 * down * (1 - v))
        y = (0.35 + 0.045 * (1 - (2 * v - 1) ** 2) + 0.11 * g["browInnerUp"] * (1 - v) ** 1.5
             + 0.10 * g[f"browOuterUp{name}"] * v**1.5 - 0.06 * down - 0.05 * down * (1 - v) ** 2)  # fmt: skip
        thick = 0.045 * (1 - 0.4 * v)
        surf(np.vstack([np.column_stack([x, y + thick / 2]), np.column_stack([x, y - thick / 2])[::-1]]), BROW)

    # nose: a bridge line and the nostril base; sneer lifts the wings
    sneer_l, sneer_r = g["noseSneerLeft"], g["noseSneerRight"]
    surf([[0.03, 0.10], [0.05, -0.08], [0.07, -0.17]], None, SKIN_DARK, 0.015, kind="line", lift=np.array([0.02, 0.10, 0.12]))
    base = np.array([[-0.10, -0.20 + 0.03 * sneer_r], [-0.05, -0.245], [0.0, -0.255], [0.05, -0.245],
                     [0.10, -0.20 + 0.03 * sneer_l]])  # fmt: skip
    surf(base, None, OUTLINE, 0.018, kind="line", lift=np.array([0.03, 0.09, 0.12, 0.09, 0.03]))

    # mouth: corners from smile/frown/stretch/pucker, opening from the jaw and lips
    pucker, funnel = g["mouthPucker"], g["mouthFunnel"]
    shift = 0.06 * (g["mouthLeft"] - g["mouthRight"]) + 0.04 * (g["jawLeft"] - g["jawRight"])
    y0 = -0.47 - 0.05 * g["jawOpen"]
    half = {}
    corner_y = {}
    for side, name in ((1, "Left"), (-1, "Right")):
        smile, frown, stretch = g[f"mouthSmile{name}"], g[f"mouthFrown{name}"], g[f"mouthStretch{name}"]
        half[side] = 0.22 * (1 + 0.22 * smile + 0.25 * stretch + 0.08 * g[f"mouthDimple{name}"] - 0.45 * pucker
                             - 0.25 * funnel - 0.12 * g[f"mouthPress{name}"])  # fmt: skip
        corner_y[side] = y0 + 0.11 * smile - 0.09 * frown - 0.02 * stretch
    uu = _lin(-1, 1, 21)
    xs = shift + np.where(uu >= 0, half[1], half[-1]) * uu
    cy_ = np.where(uu >= 0, corner_y[1], corner_y[-1])
    seam = y0 + (cy_ - y0) * np.abs(uu) ** 1.6  # the lips' meeting line: U-shaped in a smile
    open_ = (0.30 * g["jawOpen"] + 0.05 * funnel + 0.04 * (g["mouthLowerDownLeft"] + g["mouthLowerDownRight"])
             + 0.03 * (g["mouthUpperUpLeft"] + g["mouthUpperUpRight"])) * (1 - 0.8 * g["mouthClose"])  # fmt: skip
    bell = (1 - uu**2) ** 0.7
    up_in = seam + 0.25 * open_ * bell
    lo_in = seam - 0.75 * open_ * bell
    thick = 1 + 0.9 * pucker + 0.4 * funnel
    up_out = up_in + (0.035 * (1 - 0.6 * g["mouthRollUpper"]) * thick + 0.01 * g["mouthShrugUpper"]) * (1 - uu**2) ** 0.5
    up_out -= 0.012 * np.exp(-((uu / 0.12) ** 2))  # cupid's bow
    lo_out = lo_in - 0.05 * (1 - 0.6 * g["mouthRollLower"]) * thick * (1 - uu**2) ** 0.5 + 0.01 * g["mouthShrugLower"]
    surf(np.vstack([np.column_stack([xs, up_out]), np.column_stack([xs, lo_out])[::-1]]), LIP, OUTLINE, 0.008)
    if open_ > 0.004:
        inner = np.vstack([np.column_stack([xs, up_in]), np.column_stack([xs, lo_in])[::-1]])
        surf(inner, MOUTH)
        if open_ > 0.03:  # upper teeth
            teeth_lo = up_in - np.minimum(0.04, 0.5 * (up_in - lo_in))
            k = slice(3, -3)
            surf(np.vstack([np.column_stack([xs[k], up_in[k]]), np.column_stack([xs[k], teeth_lo[k]])[::-1]]), TEETH)
        if g["tongueOut"] > 0.1:
            surf(_ellipse(shift, lo_in.min() + 0.03, 0.09, 0.04 + 0.05 * g["tongueOut"], 16), TONGUE)
    else:
        surf(np.column_stack([xs, seam]), None, MOUTH, 0.012, kind="line")
    # chin: follows the jaw
    cxs = _lin(-0.16, 0.16, 9)
    surf(np.column_stack([cxs + 0.5 * shift, -0.80 - 0.14 * g["jawOpen"] + 0.03 * (cxs / 0.16) ** 2]), None, SKIN_DARK,
         0.012, kind="line")  # fmt: skip
    return _placed(shapes, on_face, pose)


def _placed(shapes: list[Shape], on_face: list, pose: _Pose) -> list[Shape]:
    """``shapes`` with each surface shape (``on_face``: index, face-plane points, lift) lifted onto the
    head, rotated and projected, or dropped when it faces away (mean normal z <= 0.05), all at once."""
    if not on_face:
        return shapes
    counts = np.array([len(xy) for _, xy, _ in on_face])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    p3 = on_surface(np.concatenate([xy for _, xy, _ in on_face]), np.concatenate([lift for _, _, lift in on_face]))
    n = p3 / HEAD**2
    n = n / np.linalg.norm(n, axis=1, keepdims=True)
    facing = np.add.reduceat((n @ pose.R.T)[:, 2], starts) / counts
    pts = pose.points(p3)
    hidden = set()
    for (k, _, _), a, m, f in zip(on_face, starts, counts, facing, strict=True):
        if f > 0.05:
            shapes[k].points = pts[a : a + m]
        else:
            hidden.add(k)
    return [sh for k, sh in enumerate(shapes) if k not in hidden]


def face_to_pixels(box: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """(cx, cy, scale) of the face drawn in ``box`` = (x0, y0, w, h): face point (x, y) is at pixel
    (cx + scale x, cy - scale y) before any head motion."""
    x0, y0, w, h = box
    return x0 + w * CENTRE[0], y0 + h * CENTRE[1], min(w / FIT[0], h / FIT[1])  # the head and shoulders fit the box


def draw_face(draw: ImageDraw.ImageDraw, frame: np.ndarray, box: tuple[int, int, int, int], pose_only: bool = False) -> None:
    """Draw one frame's face into ``box`` = (x0, y0, width, height) of a Pillow image."""
    cx, cy, s = face_to_pixels(box)
    for sh in face_shapes(frame, pose_only=pose_only):
        pts = np.column_stack([cx + s * sh.points[:, 0], cy - s * sh.points[:, 1]])
        flat = [tuple(p) for p in pts.round(1).tolist()]
        width = max(1, round(sh.width * s))
        if sh.kind == "polygon":
            draw.polygon(flat, fill=sh.fill, outline=sh.outline, width=width if sh.outline else 1)
        else:
            draw.line(flat, fill=sh.outline, width=width, joint="curve")


class FaceRenderer:
    """Render arkit58 frames to RGB arrays: ``FaceRenderer(320, 360).render(frame)`` -> (360, 320, 3) uint8.

    Drawing happens at ``supersample`` times the size and is box-filtered down (anti-aliasing).
    """

    def __init__(self, width: int = 320, height: int = 360, supersample: int = 2,
                 background: tuple[int, int, int] = (232, 236, 242)):  # fmt: skip
        self.width, self.height, self.ss, self.background = width, height, supersample, background

    def render(self, frame: np.ndarray, pose_only: bool = False) -> np.ndarray:
        img = Image.new("RGB", (self.width * self.ss, self.height * self.ss), self.background)
        draw_face(ImageDraw.Draw(img), frame, (0, 0, img.width, img.height), pose_only=pose_only)
        if self.ss > 1:
            img = img.reduce(self.ss)
        return np.asarray(img)


def face_frame(spec, frame: np.ndarray) -> tuple[np.ndarray, bool]:
    """What the face draws for one ``frame`` of motion spec ``spec`` (a :class:`realm.motion.MotionSpec`):
    (arkit58 frame (58,), pose_only). Other specs' expression coefficients have no blendshape
    meaning, so their face follows only the head rotation, if the spec has one."""
    if spec.name == "arkit58":
        return np.asarray(frame, dtype=float), False
    arkit = np.zeros(58)
    if spec.has("rotation"):
        arkit[52:55] = spec.take(np.asarray(frame, dtype=float), "rotation")
    return arkit, True


def face_description() -> dict:
    """What a drawing client needs once to draw :func:`encode_shapes` output exactly as :func:`draw_face`
    does: the colour table, the face's place in a box and the coordinate unit (JSON-ready)."""
    return {"palette": [list(c) for c in PALETTE], "centre": list(CENTRE), "fit": list(FIT), "units": UNITS,
            "kinds": {"p": "filled polygon (fill, then outline)", "l": "open polyline (outline colour)"}}  # fmt: skip


def encode_shapes(shapes: list[Shape]) -> dict:
    """Shapes -> a compact JSON-ready description (about 3.5 kB a frame): ``k`` the kinds ("p"
    polygon, "l" line) as one string, ``n`` the point counts, ``f``/``o`` fill and outline as
    :data:`PALETTE` indices (-1: none), ``w`` outline widths and ``p`` every point's (x, y), in
    1/:data:`UNITS` face units (y up), as base64 of little-endian int16. The page (realm.web) draws
    exactly these with the primitives :func:`draw_face` uses; :func:`decode_shapes` inverts it."""
    index = _PALETTE_INDEX
    pts = np.concatenate([s.points for s in shapes]) if shapes else np.zeros((0, 2))
    q = np.clip(np.round(pts * UNITS), -32768, 32767).astype("<i2")
    return {
        "k": "".join("p" if s.kind == "polygon" else "l" for s in shapes),
        "n": [len(s.points) for s in shapes],
        "f": [index[s.fill] if s.fill is not None else -1 for s in shapes],
        "o": [index[s.outline] if s.outline is not None else -1 for s in shapes],
        "w": [round(s.width * UNITS) for s in shapes],
        "p": base64.b64encode(q.tobytes()).decode("ascii"),
    }


def decode_shapes(d: dict) -> list[Shape]:
    """The shapes of :func:`encode_shapes` (to the encoding's 1/UNITS precision)."""
    pts = np.frombuffer(base64.b64decode(d["p"]), dtype="<i2").reshape(-1, 2) / UNITS
    ends = np.cumsum(d["n"])
    out = []
    for j, kind in enumerate(d["k"]):
        fill = PALETTE[d["f"][j]] if d["f"][j] >= 0 else None
        outline = PALETTE[d["o"][j]] if d["o"][j] >= 0 else None
        out.append(Shape("polygon" if kind == "p" else "line", pts[ends[j] - d["n"][j] : ends[j]], fill, outline,
                         d["w"][j] / UNITS))  # fmt: skip
    return out


def neutral_frame() -> np.ndarray:
    """An arkit58 frame at rest: every blendshape 0, head straight, no translation."""
    return np.zeros(58, dtype=np.float32)
