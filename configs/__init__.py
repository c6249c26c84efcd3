"""The bundled configs, the package lgnet_jax.configs: `--config=NAME` names configs/NAME.py."""

import pathlib

DIRECTORY = pathlib.Path(__file__).resolve().parent  # configs/, in a checkout or installed
