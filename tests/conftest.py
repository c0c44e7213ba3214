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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``native`` need the C kernels: without a C compiler (``$CC`` or ``cc``) they
    are skipped, saying so, and the optimizers take their torch steps (which the rest test)."""
    from optbench.optimizers._native import compiler

    if compiler() is not None:
        return
    skip = pytest.mark.skip(reason="no C compiler on the PATH: optbench's C kernels cannot be built here")
    for item in items:
        if "native" in item.keywords:
            item.add_marker(skip)
