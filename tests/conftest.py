"""Fixtures; the helpers the test modules share are in tests/helpers.py."""
import pytest
import torch

from tests.helpers import make_sdes

# The known-answer tests run many small ops, for which one thread is faster than two
# (no thread hand-offs) and gives the same bits on every machine.
torch.set_num_threads(1)


@pytest.fixture(params=["vp", "subvp", "ve"])
def sde(request):
    return make_sdes()[request.param]
