"""The `make demo` stage in quick mode (slow: about a minute on 2 cores)."""

import pytest

from lab.demo.avfm import run_stage


@pytest.mark.slow
def test_demo_stage_quick(tmp_path):
    metrics = run_stage(tmp_path, quick=True)
    assert metrics["train_steps"] == 30
    assert 0.0 <= metrics["c2f/miou_last"] <= 1.0
    assert (tmp_path / "avfm_eval" / "demo_quick" / "metrics.json").is_file()
    assert (tmp_path / "avfm_eval" / "demo_quick" / "miou.png").is_file()
    assert (tmp_path / "avfm_eval" / "demo_quick" / "photos.png").is_file()
