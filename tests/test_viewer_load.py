"""The viewer under load (`lab.reliability.viewer_load`): 50 real websocket clients per wave connecting and
leaving while two clients stay and keep rendering; the HTTP side refuses paths outside its assets."""

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from lab.reliability.viewer_load import load_test, traversal_statuses
from viewer.inputs import open_input
from viewer.server import ViewerConfig, ViewerServer


@pytest.fixture(scope="module")
def viewer():
    config = ViewerConfig(port=0)
    config.render.max_side, config.render.settle_s = 64, 0.05
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
    """Two rounds: the first may still grow the allocator's arenas (its memory is reported, not
    asserted); the second must hold memory within 25 MB. Threads, renderers and clients return to
    the baseline in both, and the staying clients get a new frame after every wave."""
    reports = [load_test(viewer, clients=50, waves=2, staying=2) for _ in range(2)]
    for report in reports:
        assert report.connections == 100 and report.churn_frames >= 2
        assert not report.starved, (report.staying_frames_per_wave, report.staying_wait_s)
        assert not [leak for leak in report.leaks if not leak.startswith("memory")], report.leaks
    assert reports[1].rss_mb_after - reports[1].rss_mb_before < 25, reports[1]
    assert "Traceback" not in capfd.readouterr().err


def test_requests_outside_the_viewer_assets_are_refused(viewer):
    statuses = traversal_statuses("127.0.0.1", viewer.port)
    assert all(status == 404 and not leaked for status, leaked in statuses.values()), statuses
