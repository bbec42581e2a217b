import os
import sys

# BLAS threads that spin while another process holds the cores made scipy's L-BFGS-B 15x
# slower on a busy 2-core machine; the tests are small (torch runs one thread too, below)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use tiny models, which intra-op threads only slow down."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
