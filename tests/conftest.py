import os

import pytest
import torch

# Our own optimizers compile their step when asked (compile=True); the suite never compiles
# (compiling every toy model would cost minutes), so those builds step natively or eagerly. The
# compiled path has its own tests (marked slow), which set it back.
os.environ.setdefault("OPTBENCH_COMPILE", "0")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Tests compare numbers across runs; pin the thread count so reductions do not reorder.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
