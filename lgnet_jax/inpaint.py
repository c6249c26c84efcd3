"""`python -m lgnet_jax.inpaint`: the documented path of lgnet_jax.serving.inpaint
(`lgnet inpaint`)."""

from lgnet_jax.serving.inpaint import run

if __name__ == '__main__':
  run()
