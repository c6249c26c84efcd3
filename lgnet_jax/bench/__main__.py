"""`python -m lgnet_jax.bench`: the benchmarks' command line (lgnet_jax/bench/main.py)."""

from lgnet_jax.bench import main

__doc__ = main.__doc__  # absl's --help shows the __main__ module's docstring

if __name__ == '__main__':
  main.run()
