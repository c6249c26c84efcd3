"""Exports a trained inpainter for deployment, runnable without this project's code.

  python -m lgnet_jax.tools.export --workdir W --out DIR --format=jax|savedmodel|tflite|onnx \
      [--batch-size N|dynamic] [--dtype float32|bfloat16] [--step N] [--tflite-float16] \
      [--onnx-float16]

writes the artifact (DIR/inpainter.jax, DIR as a SavedModel, DIR/inpainter.tflite or
DIR/inpainter.onnx; see `export_formats`) and DIR/export.json: its inputs, outputs,
conventions, source and the files written. The folder appears whole or not at all (a full
disk: one line, exit 1, nothing left). `--overwrite` replaces an earlier export's own files and
refuses a folder that holds others.
"""

import argparse
import datetime
import errno
import fnmatch
import importlib.metadata
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jax

from lgnet_jax import cli, errors, fileio
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.runtime import host_memory
from lgnet_jax.serving import export_formats as formats
from lgnet_jax.serving.inference import Inpainter, add_allow_user_code

FORMATS = tuple(formats.EXPORTERS)
DTYPES = ('float32', 'bfloat16')
DYNAMIC = 'dynamic'
MANIFEST = 'export.json'


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


def check_options(
    fmt: str, batch_size: str, dtype: str, tflite_float16: bool, onnx_float16: bool = False
) -> formats.Options:
  """The options, or a UsageError naming what the chosen format cannot do (or needs)."""
  if fmt not in FORMATS:
    raise cli.UsageError(f'unknown --format {fmt!r}; choose one of {", ".join(FORMATS)}')
  if dtype not in DTYPES:
    raise cli.UsageError(f'unknown --dtype {dtype!r}; choose one of {", ".join(DTYPES)}')
  options = formats.Options(fmt, parse_batch_size(batch_size), dtype, tflite_float16, onnx_float16)
  if tflite_float16 and fmt != 'tflite':
    raise cli.UsageError('--tflite-float16 applies to --format=tflite only')
  if onnx_float16 and fmt != 'onnx':
    raise cli.UsageError('--onnx-float16 applies to --format=onnx only')
  if fmt == 'onnx':
    if dtype != 'float32':
      raise cli.UsageError(
          'ONNX export is float32 (--onnx-float16 stores float16 weights; onnxruntime has no '
          f'bfloat16 convolution); --dtype {dtype} is for the jax and savedmodel formats'
      )
    formats.onnx_modules()  # MissingConverter (one line, exit 2) before anything is loaded
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


def earlier_export(path: pathlib.Path) -> Callable[[str], bool]:
  """Which entries of `path` (`fileio.folder_entries` names) its earlier export wrote: those its
  export.json lists, or for an export written before that list, those its format writes."""
  manifest_path = path / MANIFEST
  if not manifest_path.is_file():
    raise cli.UsageError(
        f'--out {path} holds no {MANIFEST}: --overwrite replaces only an earlier export'
    )
  try:
    described = json.loads(manifest_path.read_text(encoding='utf-8'))
  except (OSError, ValueError) as e:
    raise cli.UsageError(
        f'cannot read {manifest_path} ({e}): --overwrite replaces only an earlier export'
    ) from None
  described = described if isinstance(described, dict) else {}
  listed = described.get('files')
  if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
    return set(listed + [MANIFEST]).__contains__
  if described.get('format') not in formats.WRITES:
    raise cli.UsageError(
        f'{manifest_path} lists no files and names no known format: it is not an export '
        'description this command wrote; choose another --out'
    )
  patterns = (MANIFEST, *formats.WRITES[described['format']])
  return lambda name: any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def foreign_message(path: pathlib.Path, foreign: list[str]) -> str:
  """The refusal to overwrite a folder that holds files no export wrote."""
  return (
      f'--out {path} holds {errors.short_list(foreign)}, which no export wrote: --overwrite replaces '
      "only an earlier export's own files (move those, or choose another --out)"
  )


def check_out(
    out: str | os.PathLike, overwrite: bool, workdir: str | os.PathLike
) -> tuple[pathlib.Path, Callable[[str], bool]]:
  """The absolute `--out` folder once it is known to be usable (before anything is loaded), and
  which of its entries the export may replace (nothing, unless --overwrite finds an export)."""
  if fileio.is_remote(out):
    raise cli.UsageError(f'--out {out}: give a local folder (copy the export where it is needed)')
  path = pathlib.Path(out).absolute()
  if path.exists() and not path.is_dir():
    raise cli.UsageError(f'--out {path} is a file; give a folder')
  replaceable = fileio.replace_nothing
  if path.is_dir() and any(path.iterdir()):
    if not overwrite:
      raise cli.UsageError(f'--out {path} is not empty; choose another folder or pass --overwrite')
    if not fileio.is_remote(workdir) and pathlib.Path(workdir).resolve().is_relative_to(
        path.resolve()
    ):
      raise cli.UsageError(f'--out {path} holds the workdir {workdir}; choose another folder')
    replaceable = earlier_export(path)
    foreign = fileio.foreign_entries(path, replaceable)
    if foreign:
      raise cli.UsageError(foreign_message(path, foreign))
  try:
    fileio.check_creatable(path.parent)
  except NotADirectoryError as e:
    raise cli.UsageError(f'--out {path} cannot be created: {e.strerror}') from None
  except OSError as e:
    raise cli.UsageError(
        f'cannot write to {fileio.nearest_existing(path.parent)}: {e.strerror or e}; '
        'choose another --out'
    ) from None
  return path, replaceable


def folder_size(folder: pathlib.Path) -> int:
  """Bytes of every file under `folder`."""
  return sum(path.stat().st_size for path in folder.rglob('*') if path.is_file())


def _io_description(options: formats.Options, size: int) -> dict[str, Any]:
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
        'meaning': f'255 = hole, 0 = known (a value >= {formats.HOLE_THRESHOLD} is a hole)',
    }
    output = {'dtype': 'uint8', 'range': [0, 255], 'meaning': 'holes filled, known pixels as input'}
  return {
      'inputs': [
          {'name': 'images', 'shape': [batch, size, size, 3], **images},
          {'name': 'masks', 'shape': [batch, size, size, 1], **masks},
      ],
      'outputs': [{'name': formats.OUTPUT_NAME, 'shape': [batch, size, size, 3], **output}],
  }


USAGE = {
    'jax': "jax.export.deserialize(open('inpainter.jax', 'rb').read()).call(images, masks)",
    'savedmodel': (
        f"tf.saved_model.load(DIR).signatures['{formats.SIGNATURE}'](images=images, masks=masks)"
        f"['{formats.OUTPUT_NAME}']"
    ),
    'tflite': (
        "tf.lite.Interpreter(model_path='inpainter.tflite').get_signature_runner()"
        f"(images=images, masks=masks)['{formats.OUTPUT_NAME}']"
    ),
    'onnx': (
        "onnxruntime.InferenceSession('inpainter.onnx')"
        f".run(['{formats.OUTPUT_NAME}'], {{'images': images, 'masks': masks}})[0]"
    ),
}


def manifest(
    inpainter: Inpainter,
    options: formats.Options,
    source: tuple[str, int],
    artifact: str,
    size_bytes: int,
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
      'other_sizes': (
          f'{size}x{size} only; photos of any size: Inpainter.fill (lgnet_jax.serving.photo)'
      ),
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
  if options.format in ('tflite', 'onnx'):
    float16 = options.tflite_float16 or options.onnx_float16
    described['weights'] = 'float16' if float16 else 'float32'
  else:
    described['platforms'] = list(formats.PLATFORMS)
  if options.format in ('savedmodel', 'tflite'):
    described['signature'] = formats.SIGNATURE
    described['tensorflow_version'] = formats.tensorflow().__version__
  if options.format == 'onnx':
    described['opset'] = formats.ONNX_OPSET
    described['converter'] = ', '.join(
        f'{name} {importlib.metadata.version(name)}' for name in ('jax2onnx', 'onnx')
    )
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
  parser.add_argument(
      '--onnx-float16',
      action='store_true',
      help='ONNX: store the weights as float16, cast to float32 in the graph (half the file; '
      'the same time: onnxruntime has no float16 convolution on the CPU)',
  )
  parser.add_argument(
      '--overwrite',
      action='store_true',
      help='replace an earlier export in --out (only its own files)',
  )
  add_allow_user_code(parser)
  return parser


def fail(message: str) -> NoReturn:
  """The export itself failed (not bad input): one `error:` line, exit status 1."""
  print(f'error: {errors.one_line(message)}', file=sys.stderr)
  sys.exit(errors.FAILURE_EXIT)


def write_failure(out: pathlib.Path, error: OSError) -> str:
  """What a failed write (a full disk, an I/O error) says: nothing was written."""
  full = error.errno in (errno.ENOSPC, errno.EDQUOT)
  return (
      f'cannot write the export to {out}: {error.strerror or error}; nothing was written, '
      f'{out} is as it was ({"free some space or " if full else ""}choose another --out)'
  )


def main(argv: Sequence[str] | None = None) -> None:
  """Checks the options and --out, loads the workdir, exports into a temporary folder next to
  --out and renames it into place."""
  args = build_parser().parse_args(argv)
  options = check_options(
      args.format, args.batch_size, args.dtype, args.tflite_float16, args.onnx_float16
  )
  out, replaceable = check_out(args.out, args.overwrite, args.workdir)
  model = workdir_lib.load_config(args.workdir).model
  first_stage_lib.check_one_network(model, args.allow_user_code, f'--workdir {args.workdir}')
  formats.progress(
      f'loading {args.workdir}' + (f' at step {args.step}' if args.step is not None else '')
  )
  inpainter = Inpainter.from_workdir(args.workdir, args.step, args.allow_user_code)
  step = inpainter.step
  size = inpainter.config.model.image_size
  formats.progress(f'loaded step {step}: {inpainter.config.model.variant}, {size}x{size}')
  try:
    with fileio.atomic_folder(out, replaceable) as folder:
      artifact = formats.EXPORTERS[options.format](inpainter, options, folder)
      size_bytes = folder_size(folder)
      described = manifest(inpainter, options, (args.workdir, step), artifact, size_bytes)
      described['files'] = sorted(fileio.folder_entries(folder) + [MANIFEST])
      (folder / MANIFEST).write_text(json.dumps(described, indent=2) + '\n')
  except fileio.ForeignEntriesError as e:  # appeared while exporting
    raise cli.UsageError(foreign_message(out, e.entries)) from None
  except OSError as e:
    fail(write_failure(out, e))
  print(f'wrote {out} ({options.format}, {size_bytes / 1e6:.1f} MB)')


def run() -> None:
  """The console-script entry point (`lgnet-export`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main)


if __name__ == '__main__':
  run()
