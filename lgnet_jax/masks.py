"""Hole masks: procedural free-form brush strokes and the paper's regular masks (1 = hole)."""

import numpy as np
from PIL import Image, ImageDraw


def brush_stroke_mask(rng: np.random.Generator, size: int = 256,
                      hole_ratio: tuple[float, float] = (0.05, 0.5)) -> np.ndarray:
  """A free-form mask of random brush strokes, seeded by `rng`.

  Strokes (random walks of thick line segments with round joints) are added until the
  hole covers a target ratio drawn uniformly from `hole_ratio`; the result is (size, size)
  float32 in {0, 1}.
  """
  low, high = hole_ratio
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(f'hole_ratio must satisfy 0 <= low <= high <= 1, got {hole_ratio}')
  target = rng.uniform(low, high)
  canvas = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  max_width = max(size // 12, 3)
  coverage = 0.0
  while coverage < target:
    x, y = rng.uniform(0, size, 2)
    width = int(rng.integers(max(max_width // 3, 2), max_width + 1))
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(2, 8))):
      angle += rng.normal(0, 0.8)
      length = rng.uniform(size / 16, size / 4)
      nx = float(np.clip(x + length * np.cos(angle), 0, size - 1))
      ny = float(np.clip(y + length * np.sin(angle), 0, size - 1))
      draw.line([(x, y), (nx, ny)], fill=255, width=width)
      draw.ellipse([nx - width / 2, ny - width / 2, nx + width / 2, ny + width / 2], fill=255)
      x, y = nx, ny
    coverage = np.count_nonzero(np.asarray(canvas)) / size**2
    if coverage >= high:  # a large last stroke overshot: keep it, the ratio stays bounded
      break
  return (np.asarray(canvas) > 0).astype(np.float32)
