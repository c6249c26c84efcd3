"""Backend-specific kernels, apart from the layers that call them (`conv`: the convolutions)."""
