"""Helpers of benches/bench_gpu.py: model shapes and floors, the random model and its GGUF, the phases."""
