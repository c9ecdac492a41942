"""Benchmarks of jaxnorm (not tests): ``python -m experiments.benchmarks.train_step``."""
