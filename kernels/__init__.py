"""CUDA sources of the fused kernels, their host emulation header, and loaders."""
