import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Tests compare numbers across runs; pin the thread count so reductions do not reorder.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
