"""Writes the evaluation's (image, mask) pairs, for another inpainting method to fill.

  python -m lgnet_jax.tools.eval_pairs --config=CONFIG --output-dir=DIR [--config.a.b=v ...]

writes, for every hole-ratio bucket B (01-10, ..., 50-60), exactly the pairs evaluation scores
(`testset.create_test_dataset`, at model.image_size): DIR/B/images/00000.png (the resized test
image, RGB) and DIR/B/masks/00000.png (its mask as evaluation uses it, 255 = hole; soft edges
are kept unless data.mask_binarize, so threshold at 128 for a binary mask). A test image that
cannot be read is left out, as evaluation leaves it out. Run the method on every pair and write
its result as RESULTS/B/00000.png (the pair's name and size; any image extension), then evaluate
LG behind it with --config.model.first_stage=precomputed --config.data.test_first_stage_dir=RESULTS.

DIR must be new or empty; with --overwrite the pairs are written over an earlier run's files
(files this run does not write are left). `--config.a.b=value` overrides any config field, as
for `lgnet train`.
"""

import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from lgnet_jax import cli
from lgnet_jax.data import first_stage_results, image_io, masks, testset


def build_parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      epilog='--config.KEY=VALUE overrides any config field, as for lgnet train.',
  )
  parser.add_argument(
      '--config', required=True, help='config file, or the name of a bundled config (configs/)'
  )
  parser.add_argument('--output-dir', required=True, help='where the pairs go (new or empty)')
  parser.add_argument(
      '--overwrite',
      action='store_true',
      help="write into a non-empty --output-dir, over an earlier run's files",
  )
  return parser


def load_config(config: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """The config `--config=CONFIG --config.a.b=v ...` names, parsed as `lgnet train` parses it
  (`cli.parse_absl_flags`: a mistake is one `error:` line and exit status 2)."""
  argv = ['eval-pairs', f'--config={config}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, 'Config file.', flag_values=flag_values, sys_argv=argv
  )
  cli.parse_absl_flags(argv, flag_values)
  return flag_values.config


def _check_output(out: pathlib.Path, overwrite: bool) -> None:
  if out.exists() and not out.is_dir():
    raise cli.UsageError(f'--output-dir {out} exists and is not a folder')
  if out.is_dir() and not overwrite and any(out.iterdir()):
    raise cli.UsageError(
        f'--output-dir {out} is not empty: name a new folder, or pass --overwrite to write '
        "over an earlier run's pairs"
    )


def _to_uint8(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1] as uint8, rounded: exactly the uint8 an image or mask came from."""
  return np.rint(np.clip(values * 255.0, 0.0, 255.0)).astype(np.uint8)


def _write(path: pathlib.Path, array: np.ndarray) -> None:
  try:
    image_io.save_image_atomic(path, array)
  except OSError as e:
    raise cli.UsageError(f'cannot write {path}: {e.strerror or e}') from None


def write_pairs(config: ml_collections.ConfigDict, out: pathlib.Path) -> dict[str, int]:
  """Writes every bucket's pairs under `out` (see the module docstring); pairs per bucket.

  Every bucket's dataset is made (and so checked) before the first file is written.
  """
  config = config.copy_and_resolve_references()
  config.data.test_first_stage_dir = None  # the results are made from these pairs: none yet
  loaders = [testset.create_test_dataset(config, b) for b in range(len(masks.BUCKETS))]
  counts = {}
  for bucket, loader in enumerate(loaders):
    name = masks.bucket_name(bucket)
    written = skipped = 0
    for batch in loader:
      skipped += int(np.sum(batch['skipped']))
      for k in np.flatnonzero(batch['valid']):
        stem = first_stage_results.pair_name(int(batch['index'][k]))
        _write(out / name / 'images' / f'{stem}.png', _to_uint8((batch['image'][k] + 1.0) / 2.0))
        _write(out / name / 'masks' / f'{stem}.png', _to_uint8(batch['mask'][k, :, :, 0]))
        written += 1
    counts[name] = written
    unreadable = f' ({skipped} unreadable test images left out)' if skipped else ''
    print(
        f'[{bucket + 1}/{len(loaders)}] {name}: {written} pairs{unreadable} in {out / name}',
        flush=True,
    )
  return counts


def main(argv: Sequence[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  args, rest = build_parser().parse_known_args(argv)
  unknown = [arg for arg in rest if not arg.startswith('--config.')]
  if unknown:
    raise cli.UsageError(
        f'unrecognized arguments: {" ".join(unknown)} (overrides are --config.KEY=VALUE)'
    )
  out = pathlib.Path(args.output_dir)
  _check_output(out, args.overwrite)
  config = load_config(args.config, rest)
  write_pairs(config, out)
  example = f'RESULTS/{masks.bucket_name(0)}/{first_stage_results.pair_name(0)}.png'
  print(
      f'Run the first stage on each {out}/<bucket>/images/<index>.png with '
      f'masks/<index>.png, write its results as RESULTS/<bucket>/<index>.png (e.g. {example}), '
      'then evaluate with --config.model.first_stage=precomputed '
      '--config.data.test_first_stage_dir=RESULTS',
      flush=True,
  )


def run() -> None:
  """The console-script entry point, also what `python -m` runs."""
  cli.run_cli(main)


if __name__ == '__main__':
  run()
