"""Fixtures shared by the test suite, and the seed sweep of the training tests.

A test that trains and asserts what was learned takes the ``seed`` fixture (0 by default) to
seed its model's initialization and its data, and carries the ``training`` marker.
``pytest -m "training and not slow" --training-seeds N`` reruns those of the default suite for
seeds ``0 .. N-1`` (``-m training`` alone also takes the slow ones), which shows whether a bound
holds with margin or only for the one seed the default suite uses.
"""

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--training-seeds",
        type=int,
        default=0,
        metavar="N",
        help="run every test that takes the `seed` fixture for seeds 0..N-1 (default: seed 0)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    count = metafunc.config.getoption("training_seeds")
    if count and "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", range(count), ids=lambda seed: f"seed{seed}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test takes ``seed`` exactly when it is marked ``training``."""
    mismatched = [
        item.nodeid
        for item in items
        if ("seed" in getattr(item, "fixturenames", ()))
        != (item.get_closest_marker("training") is not None)
    ]
    if mismatched:
        raise pytest.UsageError(
            "a training test takes the `seed` fixture and carries @pytest.mark.training; "
            f"these have one without the other: {', '.join(mismatched)}"
        )


@pytest.fixture
def seed() -> int:
    """The seed of a training test's model initialization and data (see the module docstring)."""
    return 0


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread, so processor time measures one core's work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
