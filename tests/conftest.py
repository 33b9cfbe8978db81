"""Shared fixtures. Tests run on CPU with tiny sizes; seeds are fixed per test."""


import pytest
import torch

# Tiny ops on a loaded 2-core machine: one thread avoids oversubscription stalls (10x here).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
