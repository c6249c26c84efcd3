"""The inpainter as a program that runs without this project's code, in each export format.

jax:        `jax.export` serialized StableHLO of the evaluation-mode forward pass with the
            weights baked in, for CPU, CUDA and TPU: float32 images in [-1, 1] and masks
            (1 = hole) -> the final composite in [-1, 1].
savedmodel: a TF SavedModel (jax2tf) whose `serving_default` signature maps uint8 images
            and masks (255 = hole, 0 = known) to the uint8 inpainted images.
tflite:     the same uint8 signature for the TFLite interpreter.
onnx:       the same uint8 signature as an ONNX model (jax2onnx), for onnxruntime in any
            language or the browser (onnxruntime-web).
"""

import dataclasses
import functools
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from lgnet_jax import errors
from lgnet_jax.ops import conv as conv_ops
from lgnet_jax.serving.inference import Inpainter

JAX_FILE = 'inpainter.jax'
TFLITE_FILE = 'inpainter.tflite'
ONNX_FILE = 'inpainter.onnx'
# The ONNX opset written (jax2onnx 0.17.1's default; onnxruntime 1.32 runs it).
ONNX_OPSET = 23
# The converter is not in requirements.txt: jax2onnx 0.17.1 declares orbax-checkpoint<0.11.37
# (the project pins 0.12.8) and packages it only uses for other models, so it is installed
# without its dependencies from this list (every package it imports here, pinned).
ONNX_REQUIREMENTS = 'requirements-onnx.txt'
SIGNATURE = 'serving_default'
OUTPUT_NAME = 'inpainted'
# The jax and SavedModel programs run on any of these (each picks its branch when it loads).
PLATFORMS = ('cpu', 'cuda', 'tpu')
HOLE_THRESHOLD = 128  # uint8 masks: a pixel >= 128 is a hole (inpaint's 0.5 threshold)
# What each format writes into its folder, as `fnmatch` patterns of `fileio.folder_entries`
# names: how `export --overwrite` knows an export written before export.json listed its files.
WRITES = {
    'jax': (JAX_FILE,),
    'savedmodel': (
        'saved_model.pb',
        'fingerprint.pb',
        'assets/',
        'variables/',
        'variables/variables.index',
        'variables/variables.data-*-of-*',
    ),
    'tflite': (TFLITE_FILE,),
    'onnx': (ONNX_FILE,),
}


@dataclasses.dataclass(frozen=True)
class Options:
  """What to export: the format, the batch size (None: any), the compute dtype."""

  format: str
  batch_size: int | None
  dtype: str
  tflite_float16: bool = False
  onnx_float16: bool = False


def progress(message: str) -> None:
  """One progress line on stderr (the long steps: loading, tracing, converting, writing)."""
  print(message, file=sys.stderr, flush=True)


def forward_function(
    inpainter: Inpainter, options: Options, per_sample_dynamic: bool = True
) -> tuple[Callable, dict]:
  """`(forward(variables, images, masks) -> merged, variables)` in `options.dtype`, one sample at
  a time for a dynamic batch size (see `per_sample`) unless `per_sample_dynamic` is False (for
  programs traced with XLA's plain convolutions, which take any batch as it is).

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

  one_at_a_time = options.batch_size is None and per_sample_dynamic
  return (per_sample(forward) if one_at_a_time else forward), variables


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


def tensorflow():
  """TensorFlow, imported only for its formats (seconds of start-up), without its C++ chatter."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf


def _tf_module(inpainter: Inpainter, options: Options, platforms: Sequence[str]):
  """A tf.Module with the weights as variables and the uint8 `serve` tf.function."""
  tf = tensorflow()
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
  tf = tensorflow()
  progress(f'converting with jax2tf for {", ".join(PLATFORMS)}')
  module = _tf_module(inpainter, options, PLATFORMS)
  signature = module.serve.get_concrete_function()
  progress('writing the SavedModel')
  try:
    tf.saved_model.save(module, str(folder), signatures={SIGNATURE: signature})
  except tf.errors.OpError as e:  # TF's own file writer: a full disk is not an OSError there
    raise OSError(e.message) from e
  return '.'


def export_tflite(inpainter: Inpainter, options: Options, folder: pathlib.Path) -> str:
  """Writes `folder`/inpainter.tflite; returns its name.

  The program is traced with XLA's plain convolutions (`xla_convolutions`), which become
  CONV_2D and TRANSPOSE_CONV: the converter rejects the CPU kernels' 4-D matrix products.
  """
  tf = tensorflow()
  progress('converting with jax2tf')
  with conv_ops.xla_convolutions():
    module = _tf_module(inpainter, options, ('cpu',))
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


class MissingConverter(errors.UserError):
  """jax2onnx, onnx or onnxruntime is not installed (exit 2, one line saying how to get them)."""


class _ConverterNoise(logging.Filter):
  """Drops two kinds of converter warnings that say nothing about this network, and keeps the
  others: jax2onnx's tracebacks for plugins it skips because their library is not installed
  (equinox's layers, dm-pix's examples; one each on every export), and onnx-ir's notes that
  an intermediate value's shape annotation is left out of the file (a few dozen with a dynamic
  batch; the inputs and outputs keep theirs, and onnxruntime infers the rest)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    missing = record.exc_info is not None and isinstance(record.exc_info[1], ModuleNotFoundError)
    if missing and message.startswith('Skipping'):
      return False
    return not message.startswith('The value type for shape')


NOISY_LOGGERS = ('jax2onnx.plugins.plugin_system', 'onnx_ir.serde')


def onnx_modules():
  """(jax2onnx, onnx), imported only for this format, or MissingConverter saying how to get them."""
  for name in NOISY_LOGGERS:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _ConverterNoise) for f in logger.filters):
      logger.addFilter(_ConverterNoise())
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnx  # pylint: disable=import-outside-toplevel
    import onnxruntime  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise MissingConverter(
        f'--format=onnx needs {e.name}: python -m pip install --no-deps -r {ONNX_REQUIREMENTS} '
        "(a checkout's file; it pins jax2onnx, onnx, onnxruntime and what they import)"
    ) from None
  return jax2onnx, onnx


def weights_as_float16(model):
  """`model` with its float32 weights stored as float16, each cast back to float32 by a Cast
  node: half the file, the same float32 arithmetic (onnxruntime's CPU provider has no float16
  convolution, and folds the casts when it loads the model)."""
  _, onnx = onnx_modules()
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

  graph = model.graph
  kept, casts = [], []
  for tensor in graph.initializer:
    if tensor.data_type != onnx.TensorProto.FLOAT:
      kept.append(tensor)
      continue
    half = numpy_helper.from_array(
        numpy_helper.to_array(tensor).astype(np.float16), f'{tensor.name}_float16'
    )
    kept.append(half)
    casts.append(
        onnx.helper.make_node('Cast', [half.name], [tensor.name], to=onnx.TensorProto.FLOAT)
    )
  del graph.initializer[:]
  graph.initializer.extend(kept)
  nodes = casts + list(graph.node)  # the casts first: the graph stays in topological order
  del graph.node[:]
  graph.node.extend(nodes)
  return model


def export_onnx(inpainter: Inpainter, options: Options, folder: pathlib.Path) -> str:
  """Writes `folder`/inpainter.onnx, checked by the ONNX checker; returns its name.

  Traced with XLA's plain convolutions (`xla_convolutions`: jax2onnx cannot read
  `platform_dependent`), which become Conv and ConvTranspose nodes. A dynamic batch is the
  symbolic dimension `b`, as in the other formats.
  """
  jax2onnx, onnx = onnx_modules()
  # The batch as it is: jax2onnx cannot convert the vmapped batch-1 calls of `per_sample`.
  forward, variables = forward_function(inpainter, options, per_sample_dynamic=False)
  inpaint = uint8_function(forward)
  image_shape, mask_shape = input_shapes(options.batch_size, inpainter.config.model.image_size)
  progress(f'converting with jax2onnx (opset {ONNX_OPSET})')
  with conv_ops.xla_convolutions():
    model = jax2onnx.to_onnx(
        functools.partial(inpaint, variables),
        [jax.ShapeDtypeStruct(image_shape, jnp.uint8), jax.ShapeDtypeStruct(mask_shape, jnp.uint8)],
        model_name='lgnet_inpainter',
        opset=ONNX_OPSET,
        input_names=['images', 'masks'],
        output_names=[OUTPUT_NAME],
    )
  if options.onnx_float16:
    progress('storing the weights as float16')
    model = weights_as_float16(model)
  progress('checking the model (onnx.checker)')
  onnx.checker.check_model(model)
  progress(f'writing {ONNX_FILE}')
  (folder / ONNX_FILE).write_bytes(model.SerializeToString())
  return ONNX_FILE


EXPORTERS = {
    'jax': export_jax,
    'savedmodel': export_savedmodel,
    'tflite': export_tflite,
    'onnx': export_onnx,
}
