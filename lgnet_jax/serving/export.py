"""Exports a trained inpainter for deployment, runnable without this project's code.

  python -m lgnet_jax.tools.export --workdir W --out DIR --format=jax|savedmodel|tflite \
      [--batch-size N|dynamic] [--dtype float32|bfloat16] [--step N] [--tflite-float16]

writes DIR/export.json (inputs, outputs, conventions, source) and
  jax:        DIR/inpainter.jax, `jax.export` serialized StableHLO of the evaluation-mode
              forward pass with the weights baked in: float32 images (B, 256, 256, 3) in
              [-1, 1] and masks (B, 256, 256, 1), 1 = hole, -> the final composite in [-1, 1].
  savedmodel: DIR is a TF SavedModel (jax2tf) whose `serving_default` signature maps uint8
              images and masks (255 = hole, 0 = known) to the uint8 inpainted images.
  tflite:     DIR/inpainter.tflite, the same uint8 signature for the TFLite interpreter.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from lgnet_jax import cli, fileio
from lgnet_jax.runtime import host_memory
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.serving.inference import Inpainter

FORMATS = ('jax', 'savedmodel', 'tflite')
DTYPES = ('float32', 'bfloat16')
DYNAMIC = 'dynamic'
MANIFEST = 'export.json'
JAX_FILE = 'inpainter.jax'
TFLITE_FILE = 'inpainter.tflite'
SIGNATURE = 'serving_default'
OUTPUT_NAME = 'inpainted'
# The jax and SavedModel programs run on any of these (each picks its branch when it loads).
PLATFORMS = ('cpu', 'cuda', 'tpu')
# The TFLite converter gets the program lowered as for an accelerator: there, the project's
# convolutions are XLA's (stablehlo.convolution, which becomes CONV_2D / TRANSPOSE_CONV); the
# CPU lowering writes them as 4-D matrix products, which the converter rejects.
TFLITE_LOWERING = ('cuda',)
HOLE_THRESHOLD = 128  # uint8 masks: a pixel >= 128 is a hole (inpaint's 0.5 threshold)


@dataclasses.dataclass(frozen=True)
class Options:
  """What to export: the format, the batch size (None: any), the compute dtype."""

  format: str
  batch_size: int | None
  dtype: str
  tflite_float16: bool = False


def parse_batch_size(value: str) -> int | None:
  """`dynamic` -> None (a symbolic batch dimension), else a positive integer."""
  if value == DYNAMIC:
    return None
  try:
    size = int(value)
  except ValueError:
    size = 0
  if size < 1:
    raise cli.UsageError(f'--batch-size must be a positive integer or {DYNAMIC}, got {value!r}')
  return size


def check_options(fmt: str, batch_size: str, dtype: str, tflite_float16: bool) -> Options:
  """The options, or a UsageError naming what the chosen format cannot do."""
  if fmt not in FORMATS:
    raise cli.UsageError(f'unknown --format {fmt!r}; choose one of {", ".join(FORMATS)}')
  if dtype not in DTYPES:
    raise cli.UsageError(f'unknown --dtype {dtype!r}; choose one of {", ".join(DTYPES)}')
  options = Options(fmt, parse_batch_size(batch_size), dtype, tflite_float16)
  if tflite_float16 and fmt != 'tflite':
    raise cli.UsageError('--tflite-float16 applies to --format=tflite only')
  if fmt == 'tflite' and dtype != 'float32':
    raise cli.UsageError(
        'TFLite export is float32 (--tflite-float16 stores float16 weights); '
        f'--dtype {dtype} is for the jax and savedmodel formats'
    )
  if fmt == 'tflite' and options.batch_size is None:
    raise cli.UsageError(
        'the TFLite converter cannot convert a dynamic batch size; give --batch-size N '
        '(or export --format=savedmodel or jax for a dynamic batch)'
    )
  return options


def check_out(out: str | os.PathLike, overwrite: bool, workdir: str | os.PathLike) -> pathlib.Path:
  """The absolute `--out` folder once it is known to be usable: before anything is loaded."""
  if fileio.is_remote(out):
    raise cli.UsageError(f'--out {out}: give a local folder (copy the export where it is needed)')
  path = pathlib.Path(out).absolute()
  if path.exists() and not path.is_dir():
    raise cli.UsageError(f'--out {path} is a file; give a folder')
  if path.is_dir() and any(path.iterdir()):
    if not overwrite:
      raise cli.UsageError(f'--out {path} is not empty; choose another folder or pass --overwrite')
    if not fileio.is_remote(workdir) and pathlib.Path(workdir).resolve().is_relative_to(
        path.resolve()
    ):
      raise cli.UsageError(f'--out {path} holds the workdir {workdir}; choose another folder')
    if not (path / MANIFEST).is_file():
      raise cli.UsageError(
          f'--out {path} holds no {MANIFEST}: --overwrite replaces only an earlier export'
      )
  try:
    fileio.check_creatable(path.parent)
  except NotADirectoryError as e:
    raise cli.UsageError(f'--out {path} cannot be created: {e.strerror}') from None
  except OSError as e:
    raise cli.UsageError(
        f'cannot write to {fileio.nearest_existing(path.parent)}: {e.strerror or e}; '
        'choose another --out'
    ) from None
  return path


def forward_function(inpainter: Inpainter, options: Options) -> tuple[Callable, dict]:
  """`(forward(variables, images, masks) -> merged, variables)` in `options.dtype`, one sample at
  a time for a dynamic batch size (see `per_sample`).

  Images (B, H, W, 3) in [-1, 1] and masks (B, H, W, 1) (1 = hole) are float32 and so is the
  result, the final composite (`merged3` for LGNet). For bfloat16 the weights are cast and the
  stages compute in bfloat16; the network's merges stay float32, so known pixels stay exact.
  """
  generator, variables, dtype = inpainter.generator, inpainter.variables, options.dtype
  if dtype != 'float32':
    generator = generator.clone(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
    variables = jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)), variables)
  output = f'merged{inpainter.num_stages}'

  def forward(variables: dict, images: jax.Array, masks: jax.Array) -> jax.Array:
    merged = generator.apply(variables, images, masks, train=False)[output]
    return merged.astype(jnp.float32)  # (B, H, W, 3)

  return (per_sample(forward) if options.batch_size is None else forward), variables


def per_sample(forward: Callable) -> Callable:
  """`forward` vmapped over batch-1 calls, for a symbolic batch size.

  The project's CPU convolutions choose their formulation from the input's size, which a
  symbolic batch leaves undecided; each sample is independent in evaluation mode.
  """

  def batched(variables: dict, images: jax.Array, masks: jax.Array) -> jax.Array:
    one = lambda image, mask: forward(variables, image[None], mask[None])[0]
    return jax.vmap(one)(images, masks)

  return batched


def uint8_function(forward: Callable) -> Callable:
  """`forward` on uint8 images (B, H, W, 3) and masks (B, H, W, 1) (>= 128: hole) -> uint8.

  The network's output is mapped back as `image_io.paste_holes` does (round, clip); known
  pixels are the input's. Comparisons are on float32: TFLite has no uint8 comparison.
  """

  def inpaint(variables: dict, images: jax.Array, masks: jax.Array) -> jax.Array:
    pixels = images.astype(jnp.float32)
    holes = masks.astype(jnp.float32) >= HOLE_THRESHOLD  # (B, H, W, 1)
    merged = forward(variables, pixels / 127.5 - 1.0, holes.astype(jnp.float32))
    filled = jnp.rint(jnp.clip((merged + 1.0) * 127.5, 0, 255))
    return jnp.where(holes, filled, pixels).astype(jnp.uint8)  # (B, H, W, 3)

  return inpaint


def input_shapes(batch_size: int | None, size: int) -> tuple[tuple, tuple]:
  """The images' and masks' shapes; a None batch size is the symbolic dimension `b`."""
  (batch,) = jax_export.symbolic_shape('b') if batch_size is None else (batch_size,)
  return (batch, size, size, 3), (batch, size, size, 1)


def export_jax(inpainter: Inpainter, options: Options, folder: pathlib.Path) -> str:
  """Writes `folder`/inpainter.jax; returns its name."""
  forward, variables = forward_function(inpainter, options)
  image_shape, mask_shape = input_shapes(options.batch_size, inpainter.config.model.image_size)
  specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in (image_shape, mask_shape)]
  progress(f'tracing and lowering the forward pass for {", ".join(PLATFORMS)}')
  exported = jax_export.export(jax.jit(functools.partial(forward, variables)), platforms=PLATFORMS)(
      *specs
  )
  progress('serializing')
  data = exported.serialize()
  progress(f'writing {JAX_FILE}')
  (folder / JAX_FILE).write_bytes(data)
  return JAX_FILE


def _tensorflow():
  """TensorFlow, imported only for its formats (seconds of start-up), without its C++ chatter."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf


def _tf_module(inpainter: Inpainter, options: Options, platforms: Sequence[str]):
  """A tf.Module with the weights as variables and the uint8 `serve` tf.function."""
  tf = _tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel  # imports tf

  forward, variables = forward_function(inpainter, options)
  leaves, treedef = jax.tree.flatten(variables)
  inpaint = uint8_function(forward)
  size = inpainter.config.model.image_size
  batch = 'b' if options.batch_size is None else options.batch_size
  converted = jax2tf.convert(
      lambda weights, images, masks: inpaint(jax.tree.unflatten(treedef, weights), images, masks),
      polymorphic_shapes=[None, f'({batch}, {size}, {size}, 3)', f'({batch}, {size}, {size}, 1)'],
      with_gradient=False,
      native_serialization_platforms=tuple(platforms),
  )
  module = tf.Module()
  module.weights = [tf.Variable(np.asarray(leaf), trainable=False) for leaf in leaves]

  @tf.function(
      autograph=False,
      input_signature=[
          tf.TensorSpec((options.batch_size, size, size, 3), tf.uint8, name='images'),
          tf.TensorSpec((options.batch_size, size, size, 1), tf.uint8, name='masks'),
      ],
  )
  def serve(images, masks):
    return {OUTPUT_NAME: converted(list(module.weights), images, masks)}

  module.serve = serve
  return module


def export_savedmodel(inpainter: Inpainter, options: Options, folder: pathlib.Path) -> str:
  """Writes the SavedModel into `folder` itself; returns '.'."""
  tf = _tensorflow()
  progress(f'converting with jax2tf for {", ".join(PLATFORMS)}')
  module = _tf_module(inpainter, options, PLATFORMS)
  signature = module.serve.get_concrete_function()
  progress('writing the SavedModel')
  tf.saved_model.save(module, str(folder), signatures={SIGNATURE: signature})
  return '.'


def export_tflite(inpainter: Inpainter, options: Options, folder: pathlib.Path) -> str:
  """Writes `folder`/inpainter.tflite; returns its name."""
  tf = _tensorflow()
  progress('converting with jax2tf')
  module = _tf_module(inpainter, options, TFLITE_LOWERING)
  signature = module.serve.get_concrete_function()
  progress('converting to TFLite' + (' with float16 weights' if options.tflite_float16 else ''))
  converter = tf.lite.TFLiteConverter.from_concrete_functions([signature], module)
  if options.tflite_float16:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  data = converter.convert()
  progress(f'writing {TFLITE_FILE}')
  (folder / TFLITE_FILE).write_bytes(data)
  return TFLITE_FILE


EXPORTERS = {'jax': export_jax, 'savedmodel': export_savedmodel, 'tflite': export_tflite}


def progress(message: str) -> None:
  """One progress line on stderr (the long steps: loading, tracing, converting, writing)."""
  print(message, file=sys.stderr, flush=True)


def folder_size(folder: pathlib.Path) -> int:
  """Bytes of every file under `folder`."""
  return sum(path.stat().st_size for path in folder.rglob('*') if path.is_file())


def _io_description(options: Options, size: int) -> dict[str, Any]:
  """The manifest's inputs, outputs and how to call the artifact."""
  batch = 'b' if options.batch_size is None else options.batch_size
  if options.format == 'jax':
    images = {'dtype': 'float32', 'range': [-1.0, 1.0], 'meaning': 'RGB, uint8 x as x / 127.5 - 1'}
    masks = {'dtype': 'float32', 'values': [0.0, 1.0], 'meaning': '1 = hole, 0 = known'}
    output = {
        'dtype': 'float32',
        'range': [-1.0, 1.0],
        'meaning': 'the input with its holes filled; to uint8: rint(clip((x + 1) * 127.5, 0, 255))',
    }
  else:
    images = {'dtype': 'uint8', 'range': [0, 255], 'meaning': 'RGB'}
    masks = {
        'dtype': 'uint8',
        'range': [0, 255],
        'meaning': f'255 = hole, 0 = known (a value >= {HOLE_THRESHOLD} is a hole)',
    }
    output = {'dtype': 'uint8', 'range': [0, 255], 'meaning': 'holes filled, known pixels as input'}
  return {
      'inputs': [
          {'name': 'images', 'shape': [batch, size, size, 3], **images},
          {'name': 'masks', 'shape': [batch, size, size, 1], **masks},
      ],
      'outputs': [{'name': OUTPUT_NAME, 'shape': [batch, size, size, 3], **output}],
  }


USAGE = {
    'jax': "jax.export.deserialize(open('inpainter.jax', 'rb').read()).call(images, masks)",
    'savedmodel': (
        f"tf.saved_model.load(DIR).signatures['{SIGNATURE}'](images=images, masks=masks)"
        f"['{OUTPUT_NAME}']"
    ),
    'tflite': (
        "tf.lite.Interpreter(model_path='inpainter.tflite').get_signature_runner()"
        f"(images=images, masks=masks)['{OUTPUT_NAME}']"
    ),
}


def manifest(
    inpainter: Inpainter, options: Options, source: tuple[str, int], artifact: str, size_bytes: int
) -> dict[str, Any]:
  """export.json: what the artifact takes and returns, and where it came from."""
  size = int(inpainter.config.model.image_size)
  generator = inpainter.generator
  described = {
      'format': options.format,
      'file': artifact,
      'size_bytes': size_bytes,
      'batch_size': DYNAMIC if options.batch_size is None else options.batch_size,
      'compute_dtype': options.dtype,
      **_io_description(options, size),
      'usage': USAGE[options.format],
      'other_sizes': f'{size}x{size} only; photos of any size: Inpainter.fill (lgnet_jax.serving.photo)',
      'model': {
          'variant': inpainter.config.model.variant,
          'ngf': generator.ngf,
          'ngf_local': generator.ngf_local,
          'output': f'merged{inpainter.num_stages}',
      },
      'source': {'workdir': str(workdir_lib.as_path(source[0])), 'step': source[1]},
      'jax_version': jax.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if options.format == 'tflite':
    described['weights'] = 'float16' if options.tflite_float16 else 'float32'
  else:
    described['platforms'] = list(PLATFORMS)
  if options.format != 'jax':
    described['signature'] = SIGNATURE
    described['tensorflow_version'] = _tensorflow().__version__
  return described


def build_parser() -> argparse.ArgumentParser:
  """The command line."""
  parser = cli.ArgumentParser(
      prog='python -m lgnet_jax.tools.export', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--workdir', required=True, help='training or import workdir')
  parser.add_argument('--out', required=True, help='output folder (created; must be empty)')
  parser.add_argument('--format', required=True, help=f'one of {", ".join(FORMATS)}')
  parser.add_argument('--step', type=int, help='checkpoint step (default: the latest readable)')
  parser.add_argument(
      '--batch-size', default='1', help=f'batch size, or {DYNAMIC} for any (default 1)'
  )
  parser.add_argument(
      '--dtype', default='float32', help='compute dtype: float32 (default) or bfloat16'
  )
  parser.add_argument(
      '--tflite-float16', action='store_true', help='TFLite: store the weights as float16'
  )
  parser.add_argument('--overwrite', action='store_true', help='replace an earlier export in --out')
  return parser


# Besides cli.UsageError, the errors that `cli.run_cli` reports as one `error:` line (exit 2).
EXPECTED_ERRORS = (workdir_lib.WorkdirError,)


def main(argv: Sequence[str] | None = None) -> None:
  """Checks the options and --out, loads the workdir, exports into a temporary folder next to
  --out and renames it into place."""
  args = build_parser().parse_args(argv)
  options = check_options(args.format, args.batch_size, args.dtype, args.tflite_float16)
  out = check_out(args.out, args.overwrite, args.workdir)
  progress(f'loading {args.workdir}' + (f' at step {args.step}' if args.step is not None else ''))
  inpainter = Inpainter.from_workdir(args.workdir, args.step)
  step = inpainter.step
  size = inpainter.config.model.image_size
  progress(f'loaded step {step}: {inpainter.config.model.variant}, {size}x{size}')
  with fileio.atomic_folder(out) as folder:
    artifact = EXPORTERS[options.format](inpainter, options, folder)
    size_bytes = folder_size(folder)
    described = manifest(inpainter, options, (args.workdir, step), artifact, size_bytes)
    (folder / MANIFEST).write_text(json.dumps(described, indent=2) + '\n')
  print(f'wrote {out} ({options.format}, {size_bytes / 1e6:.1f} MB)')


def run() -> None:
  """The console-script entry point (`lgnet-export`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main, expected=EXPECTED_ERRORS)


if __name__ == '__main__':
  run()
