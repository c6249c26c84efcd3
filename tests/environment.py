"""What conftest.py puts in the environment of the session and helpers.subprocess_env in that of
every child process; no imports, so conftest.py can read it before anything imports JAX."""

# Set in child processes: their conftest.py (when they import it) keeps the environment they got.
CHILD_MARKER = 'LGNET_JAX_TEST_CHILD'

# XLA flags of the session and of every child process: XLA's older CPU fusion emitters, which
# compile about twice as fast and give bit-identical results. Measured on the 2-core EPYC host
# (XLA 0.10.2, plain programs, one process): the tiny first-stage training step compiles in
# 3.2 s instead of 6.6 s, the three stages' bfloat16 step in 12.3 s instead of 20.4 s, with the
# same loss to the last digit and the same step time.
XLA_FLAGS = '--xla_cpu_use_fusion_emitters=false'
