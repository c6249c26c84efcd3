"""Benchmarks: `python -m lgnet_jax.bench --what=data|train|infer|stages|profile` (main.py).

timing.py times a compiled program; steps.py the training step, its profile and inference;
stages.py each network alone; data.py the input pipeline; profiling.py reads a trace.
"""
