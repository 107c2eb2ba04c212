import json
import subprocess
import sys
from pathlib import Path

import pytest

from scene3d.data.formats import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_script_errors_are_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    result = _run(str(ROOT / "scripts/make_world.py"), "--out", str(tmp_path / "taken"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "taken" / "file").read_text() == "keep me"  # nothing earlier is lost


@pytest.mark.slow
def test_make_world_end_to_end(tmp_path):
    out = tmp_path / "w"
    result = _run(str(ROOT / "scripts/make_world.py"), "--out", str(out), "--seed", "4", "--width", "128",
                  "--height", "96", "--n-train", "30", "--format", "nerfstudio")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "world.json").read_text())
    assert summary["views"] == {"train": 30, "val": 8, "test": 16}
    assert 0 < summary["class_pixel_fraction"]["ground"] < 0.9
    test = load_dataset(out, "test")
    assert test.images.shape == (16, 96, 128, 3) and test.depths.shape == (16, 96, 128)
    assert (out / "contact_sheet.png").stat().st_size > 10_000


def test_demo_runs_chosen_stages_and_keeps_the_others_summary(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"quick": True, "stages": {"fields": {"test_psnr": 30.0}}}))
    result = _run(str(ROOT / "scripts/demo.py"), "--quick", "--out", str(out), "--stages", "world")
    assert result.returncode == 0, result.stderr
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert stages["fields"] == {"test_psnr": 30.0} and stages["world"]["views"]["train"] > 0
    assert not (out / "splats").exists()  # the stages not chosen did not run
    bad = _run(str(ROOT / "scripts/demo.py"), "--quick", "--out", str(out), "--stages", "wrold")
    assert bad.returncode == 2 and "wrold" in bad.stderr and "Traceback" not in bad.stderr
