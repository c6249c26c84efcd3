"""Mean LPIPS v0.1 over same-named image pairs of two folders (torch not needed).

  python -m lgnet_jax.tools.lpips --backbone alex --backbone-weights alexnet-owt-7be5be79.pth \
      --head-weights alex.pth DIR_A DIR_B

Images are paired by file name (stem); each pair is compared at DIR_A's image size (DIR_B's
image is resized bicubically if it differs), scaled to [-1, 1] as the lpips package expects.
"""

import json
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from lgnet_jax import cli
from lgnet_jax.runtime import host_memory
from lgnet_jax.evaluation.metrics_nets import lpips
from lgnet_jax.tools import folder_metrics


def pair_by_stem(dir_a: str, dir_b: str) -> list[tuple]:
  a = {p.stem: p for p in folder_metrics.list_folder(dir_a)}
  b = {p.stem: p for p in folder_metrics.list_folder(dir_b)}
  common = sorted(set(a) & set(b))
  if not common:
    raise cli.UsageError(f'no image of {dir_a} has a same-named image in {dir_b}')
  return [(a[s], b[s]) for s in common]


def main(argv: Sequence[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--backbone', choices=('alex', 'vgg'), default='alex')
  parser.add_argument(
      '--backbone-weights',
      required=True,
      help="torchvision's alexnet-owt-7be5be79.pth or vgg16-397923af.pth",
  )
  parser.add_argument(
      '--head-weights', required=True, help="the lpips package's alex.pth or vgg.pth"
  )
  folder_metrics.add_common_flags(parser)
  args = parser.parse_args(argv)
  distance = lpips.make_lpips_fn(
      lpips.load_lpips_params(args.backbone_weights, args.head_weights, args.backbone),
      args.backbone,
  )
  values = []
  for group in folder_metrics.batches(pair_by_stem(args.dir_a, args.dir_b), args.batch_size):
    for path_a, path_b in group:
      image_a = folder_metrics.load_rgb(path_a)
      image_b = folder_metrics.load_rgb(path_b, size=image_a.shape[1::-1])
      scaled = [jnp.asarray(x[None], jnp.float32) / 127.5 - 1.0 for x in (image_a, image_b)]
      values.append(float(distance(*scaled)[0]))
  mean = float(np.mean(values))
  print(
      json.dumps({'lpips': mean, 'pairs': len(values), 'backbone': args.backbone})
      if args.json
      else f'LPIPS ({args.backbone}): {mean:.4f} over {len(values)} pairs'
  )


def run() -> None:
  """The console-script entry point (`lgnet-lpips`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main)


if __name__ == '__main__':
  run()
