"""Benchmarks and GPU checks of the operator (`python -m sampleattn.bench.gpu_check`)."""
