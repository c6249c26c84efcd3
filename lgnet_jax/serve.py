"""`python -m lgnet_jax.serve`, the documented path of lgnet_jax.serving.server (`lgnet serve`)."""

from lgnet_jax.serving.server import run

if __name__ == '__main__':
  run()
