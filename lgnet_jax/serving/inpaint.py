"""Inpaints full-resolution images with an LGNet workdir (trained or imported).

  python -m lgnet_jax.inpaint --workdir W --image IMG --mask MASK --output OUT.png
  python -m lgnet_jax.inpaint --workdir W --image-dir D --mask-dir M --output-dir O

Folder mode runs multi-process too (one process per host or per accelerator): start the
same command in every process with --coordinator-address, --num-processes and --process-id
(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); process p inpaints every
pair whose position in the sorted folder listing is p modulo the number of processes.
"""

import argparse
import pathlib
import sys
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from lgnet_jax import cli
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.data import first_stage_results, image_io
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.runtime import distributed, host_memory
from lgnet_jax.serving import mask_checks, mask_edits, pairs as pairs_lib, photo
from lgnet_jax.serving.inference import Inpainter, add_allow_user_code
from lgnet_jax.serving.pairs import Pair

DEFAULT_BATCH_SIZE = 8

EPILOG = f"""\
how it works:
  The network works at {image_io.MODEL_SIZE}x{image_io.MODEL_SIZE} (config.model.image_size).
  --strategy=resize feeds it the whole image resized to that size. --strategy=crop cuts a
  square around each group of holes, --crop-margin pixels of context on each side and at
  least {image_io.MODEL_SIZE} pixels wide (overlapping squares merge), and feeds it at
  native resolution (downscaled only when larger), so a small hole in a large photo is
  filled with full detail. --strategy=auto (the default) crops when the squares cover at
  most half of the image. Either way only the hole pixels of the result are pasted into the
  original, so every known pixel is bit-identical to the input (write .png outputs to keep
  it so; .jpg re-encodes the whole image). --dilate-mask PX grows the holes by PX pixels
  first; --feather PX blends the fill into a band of PX pixels around them, whose pixels then
  change too (every pixel beyond the band stays bit-identical). When the mask is shrunk for
  the network, a network pixel is a hole if any pixel it covers is one, so thin holes are
  filled too.

masks:
  White is a hole, black is known, unless --invert-mask (black = hole). A non-binary mask
  (antialiased edges, a JPEG mask) is thresholded at 0.5 with a warning. A mask of another
  size than its image is resized to the image's size with nearest neighbour (with a warning).
  A mask with no hole leaves its image unchanged (with a warning); a mask that is mostly hole
  (perhaps drawn the other way round) or whose holes cover over 90% of the image is warned
  about; a mask with no known pixel is an error.

behind another method (X_LG):
  A workdir trained on precomputed first-stage results (model.first_stage=precomputed)
  needs --first-stage-dir: the method's result for each image, named by the image's stem
  and of the image's size. A workdir whose first stage is code of yours runs only with
  --allow-user-code (a config file must not be a way to run code).

folders:
  Images and masks are paired by file stem (D/a.jpg with M/a.png) and written as O/STEM.png.
  Images without a mask and masks without an image are skipped with a warning (an error
  when nothing pairs). Every pair is read and checked before the network runs: one bad file
  fails the run before any output is written. Outputs are written atomically (a temporary
  file and a rename), so an interrupted run never leaves a partial image.

outputs:
  An existing output file is replaced only with --overwrite; an output is never written over
  its own image or mask. The output folders are checked to be writable before the network
  is loaded.

errors:
  Bad input, an output that cannot be written (read-only or full filesystem) and a workdir
  without a readable checkpoint are reported as one line `error: ...`, with exit code 2.
"""


def build_parser() -> cli.ArgumentParser:
  """The command line: single-file or folder mode, which are mutually exclusive."""
  parser = cli.ArgumentParser(
      prog='python -m lgnet_jax.inpaint',
      description=__doc__.split('\n\n')[0],
      epilog=EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
      '--workdir', required=True, help='training or import workdir (config.json and checkpoints/)'
  )
  parser.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  single = parser.add_argument_group('one image')
  single.add_argument('--image', help='image file (any format Pillow reads)')
  single.add_argument('--mask', help='mask file (white = hole)')
  single.add_argument(
      '--output',
      help='output file; the extension picks the format (.png keeps known pixels bit-identical)',
  )
  folder = parser.add_argument_group('a folder of images')
  folder.add_argument('--image-dir', help='folder of images')
  folder.add_argument('--mask-dir', help='folder of masks, named like their images (any extension)')
  folder.add_argument('--output-dir', help='folder for the results, written as STEM.png')
  parser.add_argument('--invert-mask', action='store_true', help='black = hole, white = known')
  parser.add_argument(
      '--first-stage-dir',
      help="a precomputed first stage's results, named like the images (X_LG workdirs)",
  )
  add_allow_user_code(parser)
  parser.add_argument(
      '--strategy',
      choices=photo.STRATEGIES,
      default=photo.DEFAULT_STRATEGY,
      help='resize the whole image, crop around the holes, or choose (default %(default)s)',
  )
  parser.add_argument(
      '--crop-margin',
      type=int,
      default=photo.DEFAULT_CROP_MARGIN,
      help='pixels of context around the holes in crop mode (default %(default)s)',
  )
  parser.add_argument(
      '--dilate-mask',
      type=mask_edits.pixels,
      default=0,
      metavar='PX',
      help='grow every hole by a disk of PX pixels before filling: masks drawn tight around '
      'an object leave its edge outside (default 0: the mask as given)',
  )
  parser.add_argument(
      '--feather',
      type=mask_edits.pixels,
      default=0,
      metavar='PX',
      help='fill a band of PX pixels around the (grown) holes too and blend it into the photo, '
      "the fill's weight falling from 1 at the hole's edge to 0 at PX: the band's pixels "
      'change by design, every pixel farther away stays bit-identical (default 0)',
  )
  parser.add_argument(
      '--overwrite', action='store_true', help='replace output files that exist (default: refuse)'
  )
  parser.add_argument(
      '--batch-size',
      type=int,
      default=DEFAULT_BATCH_SIZE,
      help=f'images per forward pass in folder mode (default {DEFAULT_BATCH_SIZE})',
  )
  processes = parser.add_argument_group('several processes (folder mode)')
  processes.add_argument(
      '--coordinator-address', help='HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)'
  )
  processes.add_argument('--num-processes', type=int, help='default: $JAX_NUM_PROCESSES')
  processes.add_argument('--process-id', type=int, help='default: $JAX_PROCESS_ID')
  return parser


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr)


def save_output(path: pathlib.Path, image: np.ndarray) -> None:
  """Writes one result; a filesystem that refuses it (read-only, full) is a one-line error."""
  try:
    image_io.save_image_atomic(path, image)
  except OSError as e:
    raise cli.UsageError(f'cannot write {path}: {e.strerror or e}') from None


def load_pair(pair: Pair, invert: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """The image, its mask at the image's size (1 = hole), and warnings; bad masks raise UserError."""
  image = image_io.load_image(pair.image)
  mask, thresholded = image_io.load_mask(pair.mask, invert=invert)
  warnings = []
  if thresholded:
    warnings.append(f'{pair.mask} is not binary; thresholded at 0.5')
  height, width = image.shape[:2]
  if mask.shape != (height, width):
    warnings.append(
        f'{pair.mask} is {mask.shape[1]}x{mask.shape[0]} but {pair.image} is '
        f'{width}x{height}; mask resized with nearest neighbour'
    )
    mask = image_io.resize_mask_nearest(mask, height, width)
  warnings += mask_checks.check_mask(mask, str(pair.mask), invert, thresholded)
  return image, mask, warnings


def validate_pairs(
    pairs: Sequence[Pair],
    invert: bool,
    size: int = image_io.MODEL_SIZE,
    strategy: str = photo.DEFAULT_STRATEGY,
    crop_margin: int = photo.DEFAULT_CROP_MARGIN,
    first_stage: first_stage_results.NamedImages | None = None,
    edits: mask_edits.MaskOptions = mask_edits.MaskOptions(),
) -> None:
  """Reads every pair (and its first-stage result) once, printing its warnings, so a bad file
  fails before any output."""
  for pair in pairs:
    image, mask, warnings = load_pair(pair, invert)
    if first_stage is not None:
      first_stage.load(pair.image, shape=image.shape[:2])
    holes, regions, _ = photo.plan(mask, strategy, crop_margin, size, edits)
    for region in regions:
      if image_io.to_model_input(image[region.window], holes[region.window], size)[1].all():
        warnings.append(
            f'{pair.mask} leaves no known pixel at {size}x{size}; the holes are '
            'filled without context'
        )
        break
    for warning in warnings:
      _warn(warning)


def inpaint_pairs(
    inpainter: photo.Network,
    pairs: Sequence[Pair],
    invert: bool,
    batch_size: int,
    size: int = image_io.MODEL_SIZE,
    progress: bool = False,
    strategy: str = photo.DEFAULT_STRATEGY,
    crop_margin: int = photo.DEFAULT_CROP_MARGIN,
    first_stage: first_stage_results.NamedImages | None = None,
    edits: mask_edits.MaskOptions = mask_edits.MaskOptions(),
) -> None:
  """Runs `inpainter` over the regions of `batch_size` pairs at a time and writes each result
  (behind the results in `first_stage`, for a precomputed first stage).

  The regions of those pairs (one per pair with `resize`) go through the network in batches of
  one fixed size, the last padded with empty inputs, so the jitted forward pass compiles once.
  Each pair is read again here, so only one group of full-resolution images is in memory.
  """
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start : start + batch_size]
    loaded = [load_pair(pair, invert)[:2] for pair in chunk]
    planned = [photo.plan(mask, strategy, crop_margin, size, edits) for _, mask in loaded]
    photos = [(image, holes, regions) for (image, _), (holes, regions, _) in zip(loaded, planned)]
    if first_stage is not None:
      photos = [
          (*job, first_stage.load(pair.image, shape=job[0].shape[:2]))
          for job, pair in zip(photos, chunk)
      ]
    results = photo.fill_regions(inpainter, photos, size, min(batch_size, len(pairs)))
    for pair, (image, _), (*_, weights), result in zip(chunk, loaded, planned, results):
      save_output(pair.output, mask_edits.blend(image, result, weights))
    if progress:
      print(f'inpainted {start + len(chunk)}/{len(pairs)}', file=sys.stderr, flush=True)


def first_stage_results_for(
    model, workdir: str, folder: str | None
) -> first_stage_results.NamedImages | None:
  """The results of a precomputed first stage (`--first-stage-dir`), which such a workdir
  needs and no other takes; None for other workdirs."""
  precomputed = model.get('first_stage') == first_stage_lib.PRECOMPUTED
  if precomputed and not folder:
    raise cli.UsageError(
        f'{workdir} runs behind precomputed first-stage results: give --first-stage-dir=DIR, '
        "the method's result for each image, named like it"
    )
  if folder and not precomputed:
    raise cli.UsageError(
        f'--first-stage-dir is for a workdir trained on precomputed results; {workdir} '
        'computes its first stage itself'
    )
  return first_stage_results.NamedImages(folder, 'first-stage result') if precomputed else None


def main(argv: Sequence[str] | None = None) -> None:
  """Checks every input and the workdir, then loads the network once and writes the results."""
  args = build_parser().parse_args(argv)
  if args.batch_size < 1:
    raise cli.UsageError(f'--batch-size must be at least 1, got {args.batch_size}')
  distributed.initialize(
      distributed.Settings(
          coordinator_address=args.coordinator_address,
          num_processes=args.num_processes,
          process_id=args.process_id,
      )
  )
  pairs, warnings = pairs_lib.collect_pairs(args)
  for warning in warnings:
    _warn(warning)
  folder = args.image_dir is not None
  if jax.process_count() > 1 and not folder:
    raise cli.UsageError(
        'several processes need folder mode (--image-dir, --mask-dir, --output-dir)'
    )
  model = workdir_lib.load_config(args.workdir).model
  size = int(model.image_size)
  first_stage_lib.check_allowed(model, args.allow_user_code, f'--workdir {args.workdir}')
  first_stage = first_stage_results_for(model, args.workdir, args.first_stage_dir)
  photo.check_options(args.strategy, args.crop_margin)
  edits = mask_edits.MaskOptions(args.dilate_mask, args.feather)
  validate_pairs(pairs, args.invert_mask, size, args.strategy, args.crop_margin, first_stage, edits)
  pairs_lib.check_outputs(pairs, args.overwrite)
  distributed.barrier('inpaint_outputs_checked', 300)  # every process checked before any writes
  inpainter = Inpainter.from_workdir(args.workdir, args.step, args.allow_user_code)
  pairs = pairs[jax.process_index() :: jax.process_count()]  # this process's share
  if pairs:
    inpaint_pairs(
        inpainter,
        pairs,
        args.invert_mask,
        args.batch_size,
        size,
        progress=folder,
        strategy=args.strategy,
        crop_margin=args.crop_margin,
        first_stage=first_stage,
        edits=edits,
    )
  if jax.process_count() > 1:  # the runtime shuts down once every process is done
    multihost_utils.sync_global_devices('lgnet_jax.inpaint finished')
  if folder:
    share = (
        f' (process {jax.process_index()} of {jax.process_count()})'
        if jax.process_count() > 1
        else ''
    )
    print(f'wrote {len(pairs)} image{"s" * (len(pairs) != 1)} to {args.output_dir}{share}')
  else:
    print(f'wrote {pairs[0].output}')


def run() -> None:
  """The console-script entry point (`lgnet-inpaint`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main)


if __name__ == '__main__':
  run()
