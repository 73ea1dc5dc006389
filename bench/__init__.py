"""Benchmarks of the operator on a CUDA GPU (the suite, sattn-bench, rules_bench, peers_bench,
the plan and tile sweeps), each with a ``--dry-run`` on the CPU. The GPU correctness checks are
pytest tests: ``pytest -m gpu tests/gpu``."""
