"""LGNet image inpainting in JAX/Flax.

TensorFlow (which clu's summary writers and TFDS import) prints C++ INFO lines on the
console when it loads. Every command imports this package first, so the defaults below are
in place before anything can import TensorFlow: its C++ INFO lines off, and its oneDNN
custom operations off, which TensorFlow turns on by default on CPUs with AVX-512 and
announces in a line that TF_CPP_MIN_LOG_LEVEL does not silence (TensorFlow 2.21). Training,
evaluation and inference compute nothing with TensorFlow (it writes summaries and reads TFDS
files); only the SavedModel and TFLite exports run TensorFlow kernels, which are then its
default kernels instead of oneDNN's. Values already in the environment are kept
(TF_ENABLE_ONEDNN_OPTS=1 brings oneDNN back).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
