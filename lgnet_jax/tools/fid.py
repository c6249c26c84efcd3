"""FID between two image folders with pytorch-fid's InceptionV3 (torch not needed).

  python -m lgnet_jax.tools.fid --inception-weights pt_inception-2015-12-05-6726825d.pth DIR_A DIR_B

Images are read as RGB in [0, 1], resized to 299x299 as pytorch-fid does, and compared
through the statistics of their 2048-d pool3 features (Frechet distance in float64).
"""

import json
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from lgnet_jax import cli
from lgnet_jax.runtime import host_memory
from lgnet_jax.evaluation import metrics
from lgnet_jax.evaluation.metrics_nets import inception
from lgnet_jax.tools import folder_metrics


def folder_features(folder: str, feature_fn, batch_size: int) -> np.ndarray:
  paths = folder_metrics.list_folder(folder)
  if len(paths) < 2:
    raise cli.UsageError(f'{folder}: FID needs at least 2 images, found {len(paths)}')
  features = []
  for group in folder_metrics.batches(paths, batch_size):
    for path in group:  # images of one folder may differ in size
      image = folder_metrics.load_rgb(path).astype(np.float32) / 255.0
      features.append(np.asarray(feature_fn(jnp.asarray(image[None]))))
  return np.concatenate(features)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--inception-weights',
      required=True,
      help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth",
  )
  folder_metrics.add_common_flags(parser)
  args = parser.parse_args(argv)
  feature_fn = inception.make_feature_fn(
      inception.load_fid_inception_params(args.inception_weights)
  )
  fid = metrics.frechet_distance_of_features(
      folder_features(args.dir_a, feature_fn, args.batch_size),
      folder_features(args.dir_b, feature_fn, args.batch_size),
  )
  print(
      json.dumps({'fid': fid, 'dir_a': args.dir_a, 'dir_b': args.dir_b})
      if args.json
      else f'FID: {fid:.4f}'
  )


def run() -> None:
  """The console-script entry point (`lgnet-fid`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main)


if __name__ == '__main__':
  run()
