"""Step-time and state-size benchmarks of the registered optimizers (not part of the default test run)."""
