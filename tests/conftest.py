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


@pytest.fixture
def float64():
    """float64 as torch's default dtype for the test (modules and tensors built in it), and
    seed 0; the previous default restored after. Use with
    ``pytestmark = pytest.mark.usefixtures("float64")``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)
