"""optbench: a benchmark suite for memory-efficient PyTorch optimizers.

Tasks with fixed budgets, optimizers behind one interface, and a runner that records
memory, speed and quality the same way for every optimizer.
"""

__version__ = "0.1.0"
