"""Imports the authors' PyTorch LGNet checkpoints into an lgnet_jax workdir.

  python -m lgnet_jax.tools.import_official --checkpoint-dir DIR --workdir OUT \
      [--epoch latest] [--variant lgnet|lgnet_light]

reads DIR/{epoch}_net_G1.pth, _G2.pth, _G3.pth and, if present, _D.pth (torch is not
needed), and writes OUT/config.json and an orbax checkpoint at step 0, the layout training
writes: OUT then works with inpainting, evaluation and fine-tuning (--config.init_from=OUT).
"""

import pathlib
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lgnet_jax import cli, workdir as workdir_lib
from lgnet_jax.weights import official, pth
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.models import lgnet as lgnet_lib

IMPORTABLE_VARIANTS = ('lgnet', 'lgnet_light')


def _generator_entries(stage_kind: str, stage_name: str) -> list[official.Entry]:
  if stage_kind == lgnet_lib.LOCAL:
    return official.local_refiner_entries()
  # The reference's G1 is the nested pix2pix U-Net; its attention U-Net G3 is written flat.
  return official.unet_entries(
      flat=stage_kind == lgnet_lib.GLOBAL_ATTENTION,
      attention=stage_kind == lgnet_lib.GLOBAL_ATTENTION,
  )


def _width_hint(state_dicts: dict[str, dict], config) -> str:
  """Says which widths the checkpoint has when they differ from the config's."""
  found = []
  for name, key in (
      ('G1', 'model.model.0.weight'),
      ('G3', 'model1.0.weight'),
      ('G2', 'model.1.weight'),
  ):
    if key in state_dicts.get(name, {}):
      found.append(f'{name} width {state_dicts[name][key].shape[0]}')
  ngf = config.model.ngf or lgnet_lib.DEFAULT_NGF.get(config.model.variant, 64)
  return (
      f' (the checkpoint has {", ".join(found)}; variant {config.model.variant} expects '
      f'ngf {ngf} and local width {config.model.ngf_local}: choose --variant or --ngf/--ngf-local)'
      if found
      else ''
  )


def import_checkpoints(
    checkpoint_dir: str,
    workdir: str,
    epoch: str = 'latest',
    variant: str = 'lgnet',
    ngf: int | None = None,
    ngf_local: int | None = None,
    config_file: str | None = None,
) -> pathlib.Path:
  """Converts `{epoch}_net_G*.pth` (and `_D.pth`) in `checkpoint_dir` into `workdir`."""
  source, out = pathlib.Path(checkpoint_dir), pathlib.Path(workdir)
  if variant not in IMPORTABLE_VARIANTS:
    raise cli.UsageError(
        f'--variant {variant!r}: the authors publish {" and ".join(IMPORTABLE_VARIANTS)}'
    )
  if not source.is_dir():
    raise cli.UsageError(f'checkpoint directory {source} does not exist')
  if any((out / workdir_lib.CHECKPOINT_DIR).glob('*')):
    raise cli.UsageError(f'{out} already holds checkpoints; choose an empty --workdir')
  config = workdir_lib.load_config_file(config_file or workdir_lib.DEFAULT_CONFIG_FILE)
  config.model.variant = variant
  config.model.ngf = ngf or config.model.ngf
  config.model.ngf_local = ngf_local or config.model.ngf_local

  names = lgnet_lib.stage_names(len(lgnet_lib.VARIANT_STAGES[variant]))
  paths = {name: source / f'{epoch}_net_{name}.pth' for name in names + ['D']}
  for name in names:
    if not paths[name].is_file():
      raise cli.UsageError(
          f'{paths[name]} does not exist (expected {epoch}_net_G1/G2/G3.pth in {source})'
      )
  state_dicts = {
      name: pth.load_state_dict(path)
      for name, path in paths.items()
      if name in names or path.is_file()
  }
  try:
    g_variables, d_variables = _convert(state_dicts, paths, config)
  except official.OfficialCheckpointError as e:
    raise cli.UsageError(str(e) + _width_hint(state_dicts, config)) from None

  tx = train_state_lib.make_optimizer(config.optim, steps_per_epoch=1)
  state = train_state_lib.TrainState.create(g_variables, d_variables, tx)
  workdir_lib.save_config(out, config)
  manager = workdir_lib.checkpoint_manager(out)
  manager.save(0, args=ocp.args.Composite(**{workdir_lib.STATE_ITEM: ocp.args.StandardSave(state)}))
  manager.wait_until_finished()
  logging.info('imported %s from %s into %s', ', '.join(state_dicts), source, out)
  return out


def _convert(
    state_dicts: dict[str, dict], paths: dict[str, pathlib.Path], config
) -> tuple[dict, dict]:
  """Generator and discriminator variables from the state dicts (D random when absent)."""
  rng = jax.random.PRNGKey(config.seed)
  abstract_g, abstract_d = jax.eval_shape(lambda: train_state_lib.init_variables(config, rng))
  stage_kinds = lgnet_lib.VARIANT_STAGES[config.model.variant]
  g_variables: dict = {'params': {}, 'batch_stats': {}}
  for kind, name in zip(stage_kinds, lgnet_lib.stage_names(len(stage_kinds))):
    expected = {c: abstract_g[c][name] for c in ('params', 'batch_stats')}
    converted = official.torch_to_flax(
        state_dicts[name], _generator_entries(kind, name), expected, str(paths[name])
    )
    for collection in g_variables:
      g_variables[collection][name] = converted[collection]
  if 'D' in state_dicts:
    d_variables = official.torch_to_flax(
        state_dicts['D'], official.discriminator_entries(), abstract_d, str(paths['D'])
    )
  else:
    logging.warning('%s not found: the discriminator starts from random weights', paths['D'])
    d_variables = jax.jit(lambda: train_state_lib.init_variables(config, rng))()[1]
  return jax.tree.map(np.asarray, g_variables), d_variables


def main(argv: Sequence[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--checkpoint-dir', required=True, help='folder with {epoch}_net_G1.pth etc.')
  parser.add_argument('--workdir', required=True, help='output workdir (must hold no checkpoint)')
  parser.add_argument('--epoch', default='latest', help='checkpoint epoch prefix (default: latest)')
  parser.add_argument('--variant', default='lgnet', choices=IMPORTABLE_VARIANTS)
  parser.add_argument(
      '--ngf', type=int, help="U-Net base width if not the variant's (64, light 48)"
  )
  parser.add_argument('--ngf-local', type=int, help='local refiner width if not 64')
  parser.add_argument(
      '--config', help='config file for the non-model fields (default: configs/default.py)'
  )
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  out = import_checkpoints(
      args.checkpoint_dir,
      args.workdir,
      args.epoch,
      args.variant,
      args.ngf,
      args.ngf_local,
      args.config,
  )
  print(f'wrote {out}')


def run() -> None:
  """The console-script entry point (`lgnet-import-official`), also what `python -m` runs."""
  cli.run_cli(main)


if __name__ == '__main__':
  run()
