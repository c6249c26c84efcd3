"""The bundled configs: `--config=NAME` names configs/NAME.py (installed as lgnet_jax.configs)."""
