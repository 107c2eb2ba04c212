"""The score-distillation demo stage end to end (with its own stand-in prior: no trained one here)."""

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_score_demo_stage_quick(tmp_path):
    from lab.demo.score import run_stage

    metrics = run_stage(tmp_path, quick=True)
    assert metrics["standin_prior"] is True
    run = metrics["runs"]["sds/splats"]
    for key in ("views_png", "turntable", "ply"):
        assert Path(run[key]).is_file(), key
    assert 0 <= run["recognition"] <= 1
    assert run["shape"]["nearest"] in ("sphere", "box", "cylinder", "torus") and isinstance(run["shape_pass"], bool)
    assert json.loads((tmp_path / "score_stage.json").read_text())["runs"].keys() == {"sds/splats"}
