"""Fixtures shared by the test suite."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread, so processor time measures one core's work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
