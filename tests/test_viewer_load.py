"""The viewer under load (`lab.reliability.viewer_load`): 50 real websocket clients per wave connecting and
leaving while two clients stay and keep rendering; no memory kept per connection (traced allocations,
shown to catch a planted per-client leak); the HTTP side refuses paths outside its assets."""

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from lab.reliability.viewer_load import (
    LEAK_KB_PER_CONNECTION,
    load_test,
    retained_kb_per_connection,
    traversal_statuses,
)
from viewer.inputs import open_input
from viewer.server import ViewerConfig, ViewerServer


def _small() -> ViewerConfig:
    config = ViewerConfig(port=0)
    config.render.max_side, config.render.settle_s = 64, 0.05
    return config


@pytest.fixture(scope="module")
def viewer():
    config = _small()
    baseline = threading.active_count()
    with ViewerServer(open_input("synthetic:0"), config) as v:
        yield v
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= baseline, [t.name for t in threading.enumerate()]


def test_binds_loopback_by_default():
    spec = importlib.util.spec_from_file_location("view_script", Path(__file__).parents[1] / "scripts" / "view.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ViewArgs.__dataclass_fields__["host"].default == "127.0.0.1" == ViewerConfig().host


@pytest.mark.filterwarnings("ignore:Queued a BackgroundImageMessage on a closed connection")
def test_fifty_clients_come_and_go_while_two_stay_and_keep_getting_frames(viewer, capfd):
    """Threads, renderers and clients return to the baseline after every round, and the staying
    clients get a new frame after every wave. Memory is checked on traced allocations, in the next
    test (resident memory moves with the allocator's arenas, and is reported only)."""
    for _ in range(2):
        report = load_test(viewer, clients=50, waves=2, staying=2)
        assert report.connections == 100 and report.churn_frames >= 2
        assert not report.starved, (report.staying_frames_per_wave, report.staying_wait_s)
        assert not [leak for leak in report.leaks if not leak.startswith("memory")], report.leaks
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.filterwarnings("ignore:Queued a BackgroundImageMessage on a closed connection")
def test_the_viewer_keeps_no_memory_per_connection(viewer):
    retained = retained_kb_per_connection(viewer, clients=50, waves=2, staying=2)
    assert min(retained) < LEAK_KB_PER_CONNECTION, retained


@pytest.mark.filterwarnings("ignore:Queued a BackgroundImageMessage on a closed connection")
def test_the_memory_check_fails_on_a_planted_per_client_leak():
    """The check above, on a viewer that keeps 16 KB for every client that ever connected."""
    kept = []
    with ViewerServer(open_input("synthetic:0"), _small()) as leaky:
        leaky.server.on_client_connect(lambda client: kept.append(bytearray(16 * 1024)))
        retained = retained_kb_per_connection(leaky, clients=30, waves=1, staying=2)
    assert min(retained) > LEAK_KB_PER_CONNECTION, retained


def test_requests_outside_the_viewer_assets_are_refused(viewer):
    statuses = traversal_statuses("127.0.0.1", viewer.port)
    assert all(status == 404 and not leaked for status, leaked in statuses.values()), statuses
