"""`python -m lgnet_jax.tools.export`: each format reproduces the Inpainter, and bad input is one
`error:` line that leaves nothing behind.

Every export is made once per module and shared (each costs a trace or a conversion, and each
new input shape a compilation); the programs compile with XLA's cheaper optimisation.
"""

import contextlib
import errno
import functools
import io
import json
import logging
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest

from helpers import CliResult, assert_usage_error, optimizations_off, run_cli_in_process
from lgnet_jax import cli
from lgnet_jax.serving.inference import Inpainter
from lgnet_jax.serving import export
from lgnet_jax.serving import export_formats as formats

SIZE = 256
HOLES = ((slice(60, 150), slice(80, 200)), (slice(100, 220), slice(30, 120)))


def export_in_process(*args: object) -> CliResult:
  """The command line in this process (a module fixture has no capsys): status and output."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      cli.run_cli(functools.partial(export.main, [str(a) for a in args]))
      code = 0
    except SystemExit as e:
      code = e.code
  return CliResult(code, out.getvalue(), err.getvalue())


def hidden_leftovers(folder: pathlib.Path) -> list[str]:
  """Temporary or moved-aside folders an export may have left in `folder`."""
  return sorted(path.name for path in folder.iterdir() if path.name.startswith('.'))


@pytest.fixture(scope='module')
def inputs() -> dict[str, np.ndarray]:
  """Two random uint8 images with a rectangular hole each, and their float32 model inputs.

  A strip of mask values 128 (a hole) and 127 (known) checks the uint8 threshold.
  """
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  masks = np.zeros((2, SIZE, SIZE, 1), np.uint8)
  for mask, (rows, cols) in zip(masks, HOLES):
    mask[rows, cols] = 255
  masks[:, 10:20, 10:60] = 128
  masks[:, 10:20, 60:120] = 127
  return {
      'images': images,
      'masks': masks,
      'float_images': images.astype(np.float32) / 127.5 - 1.0,
      'float_masks': (masks >= 128).astype(np.float32),
  }


@pytest.fixture(scope='module')
def inpainter(official_workdir) -> Inpainter:
  return Inpainter.from_workdir(official_workdir)


@pytest.fixture(scope='module')
def reference(inpainter, inputs) -> np.ndarray:
  """The JAX Inpainter's float output for both images: (2, 256, 256, 3)."""
  with optimizations_off():
    return np.asarray(inpainter(inputs['float_images'], inputs['float_masks']))


def expected_uint8(reference: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
  """The reference mapped to uint8 as image_io.paste_holes does, known pixels the input's."""
  filled = np.rint(np.clip((reference + 1.0) * 127.5, 0, 255)).astype(np.uint8)
  return np.where(inputs['masks'] >= 128, filled, inputs['images'])


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('exports')


@pytest.fixture(scope='module')
def jax_export(official_workdir, folder) -> CliResult:
  """The default export: jax, batch 1, float32."""
  return export_in_process('--workdir', official_workdir, '--out', folder / 'jax', '--format=jax')


def _load_jax(path: pathlib.Path) -> jax.export.Exported:
  return jax.export.deserialize(bytearray((path / formats.JAX_FILE).read_bytes()))


def test_jax_export_matches_the_inpainter(jax_export, folder, inputs, reference):
  assert jax_export.returncode == 0, jax_export.stderr[-3000:]
  exported = _load_jax(folder / 'jax')
  assert [a.shape for a in exported.in_avals] == [(1, SIZE, SIZE, 3), (1, SIZE, SIZE, 1)]
  assert set(exported.platforms) == set(formats.PLATFORMS)
  with optimizations_off():
    out = np.asarray(exported.call(inputs['float_images'][:1], inputs['float_masks'][:1]))
  assert out.shape == (1, SIZE, SIZE, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, reference[:1], rtol=0, atol=1e-4)


def test_jax_export_writes_its_description_and_says_so(jax_export, folder, official_workdir):
  path = folder / 'jax'
  size = (path / formats.JAX_FILE).stat().st_size
  assert jax_export.stdout.splitlines()[-1] == f'wrote {path} (jax, {size / 1e6:.1f} MB)'
  for step in ('loading', 'tracing', 'writing'):
    assert step in jax_export.stderr
  assert sorted(p.name for p in path.iterdir()) == [export.MANIFEST, formats.JAX_FILE]
  described = json.loads((path / export.MANIFEST).read_text())
  assert described['files'] == [export.MANIFEST, formats.JAX_FILE]
  assert described['format'] == 'jax' and described['size_bytes'] == size
  assert described['source'] == {'workdir': str(official_workdir.resolve()), 'step': 0}
  assert described['jax_version'] == jax.__version__
  assert [i['shape'] for i in described['inputs']] == [[1, SIZE, SIZE, 3], [1, SIZE, SIZE, 1]]
  assert '1 = hole' in described['inputs'][1]['meaning']
  assert described['model']['output'] == 'merged3'
  assert hidden_leftovers(folder) == []


@pytest.mark.slow
def test_dynamic_batch_jax_export_takes_any_batch(official_workdir, folder, inputs, reference):
  path = folder / 'jax_dynamic'
  result = export_in_process(
      '--workdir', official_workdir, '--out', path, '--format=jax', '--batch-size=dynamic'
  )
  assert result.returncode == 0, result.stderr[-3000:]
  exported = _load_jax(path)
  assert json.loads((path / export.MANIFEST).read_text())['batch_size'] == 'dynamic'
  for batch in (1, 2):
    with optimizations_off():
      out = exported.call(inputs['float_images'][:batch], inputs['float_masks'][:batch])
    np.testing.assert_allclose(np.asarray(out), reference[:batch], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_bfloat16_jax_export_replaces_an_earlier_export(
    jax_export, official_workdir, folder, inputs, reference
):
  path = folder / 'bfloat16'
  shutil.copytree(folder / 'jax', path)
  result = export_in_process(
      '--workdir',
      official_workdir,
      '--out',
      path,
      '--format=jax',
      '--dtype=bfloat16',
      '--overwrite',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  described = json.loads((path / export.MANIFEST).read_text())
  assert described['compute_dtype'] == 'bfloat16'
  float32_size = json.loads((folder / 'jax' / export.MANIFEST).read_text())['size_bytes']
  assert described['size_bytes'] < 0.6 * float32_size  # bfloat16 weights
  assert hidden_leftovers(folder) == []
  with optimizations_off():
    out = np.asarray(_load_jax(path).call(inputs['float_images'][:1], inputs['float_masks'][:1]))
  assert out.dtype == np.float32
  assert np.abs(out - reference[:1]).mean() < 0.05
  known = inputs['float_masks'][:1, ..., 0] == 0
  np.testing.assert_array_equal(out[known], inputs['float_images'][:1][known])


def assert_uint8_close(out: np.ndarray, expected: np.ndarray, inputs, batch: int) -> None:
  """Within one grey level in the holes; every known pixel exactly the input's."""
  assert out.dtype == np.uint8 and out.shape == (batch, SIZE, SIZE, 3)
  assert np.abs(out.astype(int) - expected[:batch]).max() <= 1
  known = inputs['masks'][:batch, ..., 0] < 128
  np.testing.assert_array_equal(out[known], inputs['images'][:batch][known])


def exported(workdir: pathlib.Path, path: pathlib.Path, *args: str) -> tuple[CliResult, dict]:
  """Exports `workdir` into `path` with `args` (in this process); the command's result and the
  export's description, once it has succeeded."""
  result = export_in_process('--workdir', workdir, '--out', path, *args)
  assert result.returncode == 0, result.stderr[-3000:]
  return result, json.loads((path / export.MANIFEST).read_text())


@pytest.mark.slow
def test_savedmodel_with_a_dynamic_batch_serves_uint8(official_workdir, folder, inputs, reference):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # heavy; only here

  path = folder / 'savedmodel'
  result, described = exported(
      official_workdir, path, '--format=savedmodel', '--batch-size=dynamic'
  )
  assert result.stdout.splitlines()[-1].startswith(f'wrote {path} (savedmodel, ')
  assert described['signature'] == 'serving_default' and described['batch_size'] == 'dynamic'
  signature = tf.saved_model.load(str(path)).signatures['serving_default']
  out = signature(images=inputs['images'], masks=inputs['masks'])[formats.OUTPUT_NAME].numpy()
  assert_uint8_close(out, expected_uint8(reference, inputs), inputs, 2)


# TF 2.21 warns that tf.lite.Interpreter will move to the ai_edge_litert package.
@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated:UserWarning')
def test_tflite_serves_uint8(official_workdir, folder, inputs, reference):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # heavy; only here

  path = folder / 'tflite'
  result = export_in_process('--workdir', official_workdir, '--out', path, '--format=tflite')
  assert result.returncode == 0, result.stderr[-3000:]
  size = (path / formats.TFLITE_FILE).stat().st_size
  assert result.stdout.splitlines()[-1] == f'wrote {path} (tflite, {size / 1e6:.1f} MB)'
  assert json.loads((path / export.MANIFEST).read_text())['size_bytes'] == size
  interpreter = tf.lite.Interpreter(model_path=str(path / formats.TFLITE_FILE), num_threads=2)
  runner = interpreter.get_signature_runner('serving_default')
  out = runner(images=inputs['images'][:1], masks=inputs['masks'][:1])[formats.OUTPUT_NAME]
  assert_uint8_close(out, expected_uint8(reference, inputs), inputs, 1)


def onnx_outputs(path: pathlib.Path, inputs, batch: int) -> list[np.ndarray]:
  """The ONNX model's output for the first `batch` inputs with onnxruntime's graph
  optimisations on, then off (two threads, as the host has)."""
  import onnxruntime  # pylint: disable=import-outside-toplevel  # only here

  outputs = []
  for level in ('ORT_ENABLE_ALL', 'ORT_DISABLE_ALL'):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(
        str(path / formats.ONNX_FILE), options, providers=['CPUExecutionProvider']
    )
    feeds = {'images': inputs['images'][:batch], 'masks': inputs['masks'][:batch]}
    outputs.append(session.run([formats.OUTPUT_NAME], feeds)[0])
  return outputs


@pytest.mark.slow
def test_onnx_at_a_fixed_batch_matches_the_inpainter(official_workdir, folder, inputs, reference):
  import onnx  # pylint: disable=import-outside-toplevel  # only here

  path = folder / 'onnx'
  result, described = exported(official_workdir, path, '--format=onnx', '--batch-size=2')
  size = (path / formats.ONNX_FILE).stat().st_size
  assert result.stdout.splitlines()[-1] == f'wrote {path} (onnx, {size / 1e6:.1f} MB)'
  assert (described['format'], described['batch_size'], described['weights']) == (
      'onnx',
      2,
      'float32',
  )
  assert described['opset'] == formats.ONNX_OPSET and 'jax2onnx 0.17.1' in described['converter']
  assert described['files'] == [export.MANIFEST, formats.ONNX_FILE]
  model = onnx.load(str(path / formats.ONNX_FILE))
  onnx.checker.check_model(model, full_check=True)
  assert [i.name for i in model.graph.input] == ['images', 'masks']
  assert {'Conv', 'ConvTranspose'} <= {node.op_type for node in model.graph.node}
  for out in onnx_outputs(path, inputs, 2):
    assert_uint8_close(out, expected_uint8(reference, inputs), inputs, 2)


@pytest.mark.slow
def test_onnx_with_a_dynamic_batch_and_float16_weights(
    official_workdir, folder, inputs, reference, inpainter
):
  path = folder / 'onnx_dynamic'
  flags = ('--format=onnx', '--batch-size=dynamic', '--onnx-float16')
  _, described = exported(official_workdir, path, *flags)
  assert (described['batch_size'], described['weights']) == ('dynamic', 'float16')
  # Half the float32 weights' bytes, give or take the graph itself.
  weights = sum(np.asarray(a).nbytes for a in jax.tree.leaves(inpainter.variables))
  assert 0.45 * weights < described['size_bytes'] < 0.55 * weights
  for batch in (1, 2):
    for out in onnx_outputs(path, inputs, batch):
      assert_uint8_close(out, expected_uint8(reference, inputs), inputs, batch)


@pytest.mark.parametrize(
    'logger_name, message, error, kept',
    [
        (
            formats.NOISY_LOGGERS[0],
            'Skipping import of jax2onnx.plugins.eqx',
            ModuleNotFoundError(),
            False,
        ),
        (formats.NOISY_LOGGERS[0], 'Skipping import of jax2onnx.plugins.jax', ValueError(), True),
        (formats.NOISY_LOGGERS[0], 'another warning', ModuleNotFoundError(), True),
        (formats.NOISY_LOGGERS[1], 'The value type for shape [1] is not known.', None, False),
        (formats.NOISY_LOGGERS[1], 'another warning', None, True),
    ],
)
def test_the_converters_noise_is_dropped_and_their_other_warnings_kept(
    logger_name, message, error, kept
):
  formats.onnx_modules()
  logger = logging.getLogger(logger_name)
  exc_info = (type(error), error, None) if error else None
  record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), exc_info)
  assert all(f.filter(record) for f in logger.filters) == kept


def test_onnx_without_its_converter_is_one_line(
    run_export, official_workdir, tmp_path, monkeypatch
):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # `import jax2onnx` fails
  result = run_export('--workdir', official_workdir, '--out', tmp_path / 'out', '--format=onnx')
  assert_usage_error(result, '--format=onnx needs jax2onnx', formats.ONNX_REQUIREMENTS)
  assert list(tmp_path.iterdir()) == []


@pytest.fixture
def run_export(capsys):
  """Runs `python -m lgnet_jax.tools.export ARGS` in this process."""
  return lambda *args: run_cli_in_process(capsys, export, *args)


@pytest.mark.parametrize(
    'args, fragment',
    [
        (['--format=svg'], "unknown --format 'svg'"),
        (['--format=onnx', '--dtype=bfloat16'], 'ONNX export is float32'),
        (['--format=jax', '--onnx-float16'], '--format=onnx only'),
        (['--format=jax', '--batch-size=0'], '--batch-size must be a positive integer'),
        (['--format=jax', '--batch-size=two'], "got 'two'"),
        (['--format=jax', '--dtype=float16'], "unknown --dtype 'float16'"),
        (['--format=tflite', '--batch-size=dynamic'], 'cannot convert a dynamic batch'),
        (['--format=tflite', '--dtype=bfloat16'], 'TFLite export is float32'),
        (['--format=jax', '--tflite-float16'], '--format=tflite only'),
        (['--format=jax', '--step=last'], "invalid int value: 'last'"),
    ],
)
def test_bad_options_are_one_error_line(run_export, official_workdir, tmp_path, args, fragment):
  result = run_export('--workdir', official_workdir, '--out', tmp_path / 'out', *args)
  assert_usage_error(result, fragment)
  assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_workdir(run_export, tmp_path):
  (tmp_path / 'empty').mkdir()
  result = run_export('--workdir', tmp_path / 'empty', '--out', tmp_path / 'out', '--format=jax')
  assert_usage_error(result, 'is not an lgnet_jax workdir')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty']


def test_outputs_that_cannot_be_used(run_export, official_workdir, tmp_path):
  busy = tmp_path / 'busy'
  busy.mkdir()
  (busy / 'notes.txt').write_text('mine')
  (tmp_path / 'file').write_text('')
  cases = [
      (['--out', busy], f'--out {busy} is not empty'),
      (['--out', busy, '--overwrite'], 'holds no export.json'),
      (['--out', tmp_path / 'file' / 'out'], f'{tmp_path / "file"} is a file'),
      (['--out', tmp_path / 'file'], 'is a file; give a folder'),
      (['--out', official_workdir.parent, '--overwrite'], 'holds the workdir'),
  ]
  for args, fragment in cases:
    assert_usage_error(run_export('--workdir', official_workdir, '--format=jax', *args), fragment)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['busy', 'file']
  assert [p.name for p in busy.iterdir()] == ['notes.txt']


def test_a_failed_export_leaves_nothing(inpainter, official_workdir, tmp_path, monkeypatch):
  """An error half-way (here in the exporter) removes the temporary folder and the parents made."""
  monkeypatch.setattr(export.Inpainter, 'from_workdir', lambda workdir, step, *options: inpainter)

  def fail(inpainter, options, folder):
    (folder / formats.JAX_FILE).write_bytes(b'half')
    raise RuntimeError('the converter broke')

  monkeypatch.setitem(formats.EXPORTERS, 'jax', fail)
  with pytest.raises(RuntimeError, match='the converter broke'):
    export.main(
        ['--workdir', str(official_workdir), '--out', str(tmp_path / 'a' / 'b'), '--format=jax']
    )
  assert list(tmp_path.iterdir()) == []


def snapshot(folder: pathlib.Path) -> dict[str, bytes | None]:
  """Every entry under `folder` with its bytes (None for a folder)."""
  return {
      str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
      for path in sorted(folder.rglob('*'))
  }


@pytest.fixture
def fake_export(inpainter, monkeypatch):
  """Exports write `inpainter.jax` holding `content[0]` (no tracing); `during` runs mid-export."""
  monkeypatch.setattr(export.Inpainter, 'from_workdir', lambda workdir, step, *options: inpainter)
  state = {'content': b'new', 'during': lambda folder: None}

  def write(inpainter, options, folder):
    (folder / formats.JAX_FILE).write_bytes(state['content'])
    state['during'](folder)
    return formats.JAX_FILE

  monkeypatch.setitem(formats.EXPORTERS, 'jax', write)
  return state


def test_overwrite_refuses_a_folder_with_foreign_files_and_deletes_nothing(
    run_export, official_workdir, tmp_path, fake_export
):
  out = tmp_path / 'out'
  args = ('--workdir', official_workdir, '--out', out, '--format=jax', '--overwrite')
  fake_export['content'] = b'old'
  assert run_export(*args).returncode == 0
  (out / 'NOTES.txt').write_text('mine')
  (out / 'mine').mkdir()
  (out / 'mine' / formats.JAX_FILE).write_text('also mine')
  before = snapshot(tmp_path)
  fake_export['content'] = b'new'
  assert_usage_error(
      run_export(*args), f'--out {out} holds NOTES.txt, mine/, which no export wrote'
  )
  assert snapshot(tmp_path) == before


def test_a_foreign_file_that_appears_during_the_export_is_kept(
    run_export, official_workdir, tmp_path, fake_export
):
  out = tmp_path / 'out'
  args = ('--workdir', official_workdir, '--out', out, '--format=jax', '--overwrite')
  fake_export['content'] = b'old'
  assert run_export(*args).returncode == 0
  fake_export['content'] = b'new'
  fake_export['during'] = lambda folder: (out / 'NOTES.txt').write_text('mine')
  assert_usage_error(run_export(*args), 'holds NOTES.txt, which no export wrote')
  assert sorted(snapshot(tmp_path)) == [
      'out',
      'out/NOTES.txt',
      'out/export.json',
      'out/inpainter.jax',
  ]
  assert (out / formats.JAX_FILE).read_bytes() == b'old'


EARLIER = {  # an export of each format written before export.json listed its files
    'jax': ['inpainter.jax'],
    'tflite': ['inpainter.tflite'],
    'savedmodel': [
        'saved_model.pb',
        'fingerprint.pb',
        'assets/',
        'variables/variables.index',
        'variables/variables.data-00000-of-00001',
    ],
    'listed': ['inpainter.jax', 'extra/', 'extra/notes.txt'],  # listed in its export.json
}


@pytest.mark.parametrize('earlier', EARLIER)
def test_overwrite_replaces_a_clean_earlier_export(
    run_export, official_workdir, tmp_path, fake_export, earlier
):
  out = tmp_path / 'out'
  out.mkdir()
  for name in EARLIER[earlier]:
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    if name.endswith('/'):
      (out / name).mkdir(exist_ok=True)
    else:
      (out / name).write_text('old')
  described = {'format': earlier}
  if earlier == 'listed':
    described = {'format': 'jax', 'files': ['export.json', *EARLIER[earlier]]}
  (out / export.MANIFEST).write_text(json.dumps(described))
  result = run_export('--workdir', official_workdir, '--out', out, '--format=jax', '--overwrite')
  assert result.returncode == 0, result.stderr
  assert sorted(snapshot(tmp_path)) == ['out', 'out/export.json', 'out/inpainter.jax']
  assert (out / formats.JAX_FILE).read_bytes() == b'new'


def test_overwrite_refuses_a_description_it_cannot_read(run_export, official_workdir, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / export.MANIFEST).write_text('{"format": "svg"}')
  assert_usage_error(
      run_export('--workdir', official_workdir, '--out', out, '--format=jax', '--overwrite'),
      'lists no files and names no known format',
  )
  (out / export.MANIFEST).write_text('{not json')
  assert_usage_error(
      run_export('--workdir', official_workdir, '--out', out, '--format=jax', '--overwrite'),
      f'cannot read {out / export.MANIFEST}',
  )
  assert sorted(snapshot(tmp_path)) == ['out', 'out/export.json']


@pytest.mark.parametrize('earlier', [False, True], ids=['new', 'overwrite'])
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing(
    run_export, official_workdir, tmp_path, fake_export, earlier
):
  out = tmp_path / 'a' / 'out'
  args = ('--workdir', official_workdir, '--out', out, '--format=jax', '--overwrite')
  if earlier:
    fake_export['content'] = b'old'
    assert run_export(*args).returncode == 0
  before = snapshot(tmp_path)

  def no_room(folder):
    raise OSError(errno.ENOSPC, 'No space left on device')

  fake_export['content'], fake_export['during'] = b'half', no_room
  result = run_export(*args)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert lines == [
      f'error: cannot write the export to {out}: No space left on device; nothing was written, '
      f'{out} is as it was (free some space or choose another --out)'
  ]
  assert snapshot(tmp_path) == before  # no temporary folder, no parent made for it


def test_savedmodel_write_errors_become_os_errors(inpainter, tmp_path, monkeypatch):
  """TF's own file writer raises tf.errors on a full disk; the export sees an OSError."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # heavy; only here

  module = tf.Module()
  module.serve = tf.function(lambda x: {'y': x}, input_signature=[tf.TensorSpec((), tf.float32)])
  monkeypatch.setattr(formats, '_tf_module', lambda *args: module)

  def no_room(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')

  monkeypatch.setattr(tf.saved_model, 'save', no_room)
  options = formats.Options('savedmodel', 1, 'float32')
  with pytest.raises(OSError, match='No space left on device'):
    formats.export_savedmodel(inpainter, options, tmp_path)
