"""A built-in procedural dataset: simple cartoon faces (no download).

Each image is a deterministic function of `(seed, index)`: a textured, coloured
background, a head ellipse with random centre, scale, rotation and skin colour,
hair in one of `NUM_LABELS` colours (the label), two eyes with brows and irises,
a nose and a mouth. The parts have strong closed contours, so EdgeBoxes finds
boxes on them, and they move with the pose, so a model trained on the patches
has to learn where parts go.

Two pose ranges (`POSES`): "varied" (the default; head centre within ±12
pixels of 128, ±15° roll, ±11 % size) and "aligned" (±3 pixels, ±4°, ±3 %),
which places the face the way CelebA's aligned crops do (landmarks at nearly
fixed positions). `--source synthetic:aligned` selects it; the demo uses it.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

SIZE = 128
NUM_LABELS = 4
# RGB hair colours, one per label: black, blond, red, blue.
HAIR_COLOURS = ((30, 25, 20), (225, 195, 95), (185, 60, 25), (40, 80, 200))
SKIN_COLOURS = ((255, 220, 185), (235, 190, 150), (200, 150, 110), (150, 100, 70), (110, 75, 55))


@dataclasses.dataclass(frozen=True)
class Pose:
  """Half-ranges of the head's placement in a 128-pixel frame (uniform draws)."""

  shift_x: float  # head centre, pixels
  shift_y: float  # head centre, pixels
  roll: float  # degrees
  size: float  # head half-width spread around 38 pixels


POSES = {"varied": Pose(12.0, 8.0, 15.0, 4.0), "aligned": Pose(3.0, 2.0, 4.0, 1.0)}


def face_id(index: int) -> str:
  """The stable id of synthetic image `index`."""
  return f"synthetic/{index:07d}"


def _jitter(rng: np.random.Generator, colour, amount: int = 20) -> tuple[int, int, int]:
  c = np.asarray(colour) + rng.integers(-amount, amount + 1, size=3)
  return tuple(int(v) for v in np.clip(c, 0, 255))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A smooth two-colour gradient plus low-contrast noise, uint8 [size, size, 3]."""
  c0 = rng.integers(60, 200, size=3).astype(np.float32)
  c1 = rng.integers(60, 200, size=3).astype(np.float32)
  t = np.linspace(0.0, 1.0, size, dtype=np.float32)
  angle = rng.uniform(0, np.pi)
  ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
  ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
  img = c0 + (c1 - c0) * ramp[..., None]
  noise = rng.normal(0.0, 1.0, size=(size // 4, size // 4, 1)).astype(np.float32)
  noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
  img = img + 10.0 * noise + rng.normal(0.0, 3.0, size=(size, size, 1)).astype(np.float32)
  return np.clip(img, 0, 255).astype(np.uint8)


def _pt(cx: float, cy: float, dx: float, dy: float, rot: float) -> tuple[int, int]:
  """Point (dx, dy) in face coordinates, rotated by `rot` around (cx, cy)."""
  c, s = np.cos(rot), np.sin(rot)
  return int(round(cx + c * dx - s * dy)), int(round(cy + s * dx + c * dy))


def make_face(seed: int, index: int, size: int = SIZE, pose: str = "varied") -> tuple[np.ndarray, int]:
  """Draws synthetic face `index` for `seed`.

  Args:
    seed: dataset seed.
    index: image index.
    size: output side in pixels.
    pose: a key of `POSES`. The random draws are the same for every pose (only
      their ranges differ), so the two datasets hold the same faces.

  Returns:
    (image uint8 [size, size, 3] RGB, label in [0, NUM_LABELS)).

  Raises:
    ValueError: unknown `pose`.
  """
  if pose not in POSES:
    raise ValueError(f"pose must be one of {sorted(POSES)}, got {pose!r}")
  p = POSES[pose]
  rng = np.random.default_rng([seed, index])
  label = int(rng.integers(NUM_LABELS))
  img = _background(rng, size)
  k = size / 128.0
  rx = (38 + p.size * rng.uniform(-1, 1)) * k  # head half-width
  ry = rx * rng.uniform(1.15, 1.35)  # head half-height
  cx = size / 2 + p.shift_x * rng.uniform(-1, 1) * k
  cy = size / 2 + 4 * k + p.shift_y * rng.uniform(-1, 1) * k
  rot = np.deg2rad(p.roll * rng.uniform(-1, 1))
  deg = float(np.rad2deg(rot))
  skin = _jitter(rng, SKIN_COLOURS[rng.integers(len(SKIN_COLOURS))], 10)
  hair = _jitter(rng, HAIR_COLOURS[label], 15)
  dark = (20, 20, 20)
  aa = cv2.LINE_AA

  # Hair: a larger ellipse behind the upper head.
  hair_c = _pt(cx, cy, 0, -0.25 * ry, rot)
  cv2.ellipse(img, hair_c, (int(rx * 1.12), int(ry * 0.95)), deg, 180, 360, hair, -1, aa)
  # Head and ears.
  for side in (-1, 1):
    cv2.ellipse(
      img,
      _pt(cx, cy, side * rx * 0.98, 0.0, rot),
      (int(7 * k), int(12 * k)),
      deg,
      0,
      360,
      skin,
      -1,
      aa,
    )
  cv2.ellipse(img, (int(cx), int(cy)), (int(rx), int(ry)), deg, 0, 360, skin, -1, aa)
  cv2.ellipse(img, (int(cx), int(cy)), (int(rx), int(ry)), deg, 0, 360, dark, 1, aa)
  # Fringe.
  cv2.ellipse(
    img,
    _pt(cx, cy, 0, -0.72 * ry, rot),
    (int(rx * 0.9), int(ry * 0.3)),
    deg,
    180,
    360,
    hair,
    -1,
    aa,
  )

  # Eyes with brows.
  eye_dx = rx * rng.uniform(0.38, 0.48)
  eye_dy = -ry * rng.uniform(0.12, 0.22)
  eye_r = rng.uniform(7, 9) * k
  iris = _jitter(rng, ((60, 110, 40), (70, 90, 160), (90, 60, 30))[rng.integers(3)], 15)
  gaze = rng.uniform(-0.35, 0.35) * eye_r
  for side in (-1, 1):
    ec = _pt(cx, cy, side * eye_dx, eye_dy, rot)
    cv2.ellipse(img, ec, (int(eye_r * 1.3), int(eye_r)), deg, 0, 360, (250, 250, 250), -1, aa)
    cv2.ellipse(img, ec, (int(eye_r * 1.3), int(eye_r)), deg, 0, 360, dark, 1, aa)
    cv2.circle(img, _pt(cx, cy, side * eye_dx + gaze, eye_dy, rot), int(eye_r * 0.6), iris, -1, aa)
    cv2.circle(img, _pt(cx, cy, side * eye_dx + gaze, eye_dy, rot), int(eye_r * 0.3), dark, -1, aa)
    b0 = _pt(cx, cy, side * (eye_dx - eye_r * 1.4), eye_dy - eye_r * 1.7, rot)
    b1 = _pt(cx, cy, side * (eye_dx + eye_r * 1.4), eye_dy - eye_r * 1.9, rot)
    cv2.line(img, b0, b1, hair, max(2, int(3 * k)), aa)

  # Nose: a filled triangle, shaded.
  nose_len = ry * rng.uniform(0.25, 0.33)
  nose_w = rx * rng.uniform(0.15, 0.22)
  nose_col = tuple(int(v * 0.8) for v in skin)
  pts = np.array(
    [
      _pt(cx, cy, 0, eye_dy + 4 * k, rot),
      _pt(cx, cy, -nose_w, eye_dy + nose_len, rot),
      _pt(cx, cy, nose_w, eye_dy + nose_len, rot),
    ],
    np.int32,
  )
  cv2.fillConvexPoly(img, pts, nose_col, aa)
  cv2.polylines(img, [pts], True, dark, 1, aa)

  # Mouth: lips ellipse with a dark line, random width and smile.
  mouth_y = ry * rng.uniform(0.45, 0.58)
  mouth_w = rx * rng.uniform(0.35, 0.5)
  lips = _jitter(rng, (190, 60, 70), 25)
  mc = _pt(cx, cy, 0, mouth_y, rot)
  cv2.ellipse(img, mc, (int(mouth_w), int(rng.uniform(4, 8) * k)), deg, 0, 360, lips, -1, aa)
  cv2.ellipse(img, mc, (int(mouth_w * 0.9), int(rng.uniform(1, 4) * k)), deg, 0, 180, dark, 1, aa)
  return img, label
