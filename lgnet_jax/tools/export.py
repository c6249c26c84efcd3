"""`python -m lgnet_jax.tools.export`, the documented path of lgnet_jax.serving.export (`lgnet export`)."""

from lgnet_jax.serving.export import run

if __name__ == '__main__':
  run()
