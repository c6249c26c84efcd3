"""The tests' one multi-process run (see test_distributed.py): every process runs this module.

In one runtime of several processes (the runtime starts once per process, so one launch
serves every multi-process behaviour), each process:
1. trains the tiny configuration to step 2 (checkpoint 2);
2. resumes it, training until the test's SIGTERM to one process stops every process;
3. evaluates the newest checkpoint (on the images of --test-dir);
4. inpaints a folder with the networks of --inpaint-workdir (lgnet_jax.inpaint's main);
5. prints 'ready to lose a process'; then process 1 sleeps until the test kills it, and
   process 0 waits for it at a barrier, which the runtime ends when its heartbeats stop.

  python -m distributed_driver --workdir=W --coordinator-address=HOST:PORT --num-processes=2 \
      --process-id=I --test-dir=T --inpaint-workdir=W2 --image-dir=D --mask-dir=M --output-dir=O
"""

import argparse
import os
import time

import jax
from absl import logging as absl_logging

from helpers import EXACT_ARGS, TINY_ARGS, tiny_config
from lgnet_jax import console
from lgnet_jax.evaluation import evaluate
from lgnet_jax.ops import conv
from lgnet_jax.runtime import distributed
from lgnet_jax.serving import inpaint
from lgnet_jax.training import loop

# Long enough that a loaded 2-core machine does not miss heartbeats of live processes.
HEARTBEAT_TIMEOUT_S = 30
# The tiny configuration with plain gradient descent on a global batch of 4 (one image per
# device), checkpoints every 2 steps, all kept.
TRAIN_ARGS = (
    *TINY_ARGS,
    *EXACT_ARGS,
    '--config.train.checkpoint_every_steps=2',
    '--config.train.keep_checkpoints=None',
    f'--config.distributed.heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}',
)


def eval_args(test_dir: str) -> tuple[str, ...]:
  """Evaluation on the images of `test_dir` (4: one batch per bucket), one sample each."""
  return (
      '--config.data.source=folder',
      f'--config.data.test_dir={test_dir}',
      '--config.data.test_masks_per_bucket=1',
      '--config.eval.batch_size=4',
      '--config.eval.num_samples=1',
  )


READY = 'ready to lose a process'


def main() -> None:
  parser = argparse.ArgumentParser()
  for name in ('workdir', 'coordinator-address', 'test-dir', 'inpaint-workdir', 'image-dir'):
    parser.add_argument(f'--{name}', required=True)
  parser.add_argument('--mask-dir', required=True)
  parser.add_argument('--output-dir', required=True)
  parser.add_argument('--num-processes', type=int, required=True)
  parser.add_argument('--process-id', type=int, required=True)
  args = parser.parse_args()
  absl_logging.use_absl_handler()  # the console of lgnet_jax.main (absl's app.run sets it up)
  absl_logging.set_verbosity(absl_logging.INFO)
  console.configure(0)
  print(f'pid {os.getpid()}', flush=True)
  config = tiny_config(*TRAIN_ARGS)
  distributed.initialize(
      distributed.Settings(
          coordinator_address=args.coordinator_address,
          num_processes=args.num_processes,
          process_id=args.process_id,
          **{key: int(value) for key, value in config.distributed.items()},
      )
  )
  loop.train_and_evaluate(
      tiny_config(*TRAIN_ARGS, '--config.train.num_train_steps=2'), args.workdir
  )
  state = loop.train_and_evaluate(
      tiny_config(*TRAIN_ARGS, '--config.train.num_train_steps=1000'), args.workdir
  )
  print(f'training returned at step {int(state.step)}', flush=True)
  evaluate.evaluate(tiny_config(*TRAIN_ARGS, *eval_args(args.test_dir)), args.workdir)
  inpaint.main(
      [
          *('--workdir', args.inpaint_workdir, '--image-dir', args.image_dir),
          *('--mask-dir', args.mask_dir, '--output-dir', args.output_dir, '--batch-size', '2'),
      ]
  )
  print(READY, flush=True)
  if jax.process_index() == 1:
    time.sleep(3600)  # until the test kills this process
  distributed.barrier('the other process is killed', 3600)


if __name__ == '__main__':
  # XLA's plain convolutions, as the one-device reference it is compared with (see
  # helpers.plain_programs): they compile in about half the time of the CPU kernels.
  with conv.xla_convolutions():
    main()
