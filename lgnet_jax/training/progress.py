"""The console's line per log interval while training: step, images/s, ETA, headline losses."""

import time
from collections.abc import Mapping


def format_duration(seconds: float) -> str:
  """`42s`, `7m05s` or `3h20m`."""
  seconds = max(int(round(seconds)), 0)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


class ConsoleProgress:
  """The console's line per log interval: step, images/s, ETA and the headline losses.

  Times run from the moment the first step of this run had finished (so compiling and the
  first step's warm-up are not counted): images/s over the interval since the previous line,
  the ETA from the average step time since then.
  """

  def __init__(self, num_train_steps: int, batch_size: int):
    self.num_train_steps, self.batch_size = num_train_steps, batch_size
    self._start: tuple[int, float] | None = None  # (step, time) the clock started at
    self._previous: tuple[int, float] | None = None  # the previous line's

  def finished(self, step: int) -> None:
    """`step`'s results are on the host; the first call starts the clock."""
    if self._start is None:
      self._start = self._previous = (step, time.monotonic())

  def line(self, step: int, scalars: Mapping[str, float]) -> str:
    """`[step] images/s, ETA, train/total_g=..., train/l1_hole_S=...` (S the last stage)."""
    self.finished(step)
    now = time.monotonic()
    (start_step, start), (previous_step, previous) = self._start, self._previous
    self._previous = (step, now)
    if step > previous_step:
      seconds = max(now - previous, 1e-6)
      speed = f'{(step - previous_step) * self.batch_size / seconds:.2f} img/s'
      eta = format_duration((now - start) / (step - start_step) * (self.num_train_steps - step))
    else:
      speed, eta = '- img/s', '-'
    holes = sorted(
        (k for k in scalars if k.startswith('train/l1_hole_')),
        key=lambda k: int(k.rsplit('_', 1)[1]),
    )
    shown = [k for k in ('train/total_g', *holes[-1:]) if k in scalars]
    terms = [f'{k}={scalars[k]:.4f}' for k in shown]
    if scalars.get('train/skipped_images'):
      terms.append(f'train/skipped_images={int(scalars["train/skipped_images"])}')
    return f'[{step}] {speed}, ETA {eta}, ' + ', '.join(terms)
