import pytest

from tests.gaussians.helpers import random_scene, two_cameras


@pytest.fixture
def scene():
    return random_scene(300)


@pytest.fixture
def cameras():
    return two_cameras()
