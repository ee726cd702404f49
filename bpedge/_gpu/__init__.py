"""GPU cascade internals: cuda-python resources, NVRTC kernels and TensorRT engines (lazy imports)."""
