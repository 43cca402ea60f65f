"""Shared set-up for the unit tests."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests use small models: a second thread only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
