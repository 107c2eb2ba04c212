"""The NaN / inf guard (`scene3d.guard`) and its wiring into every training loop: a non-finite loss,
gradient or parameter stops the run naming the step and the tensor (the last good checkpoint
kept), or with `nonfinite="skip"` skips the step."""

import pytest
import torch

from scene3d.checkpoint import load_checkpoint
from scene3d.errors import NonFiniteError
from scene3d.guard import FiniteGuard, first_nonfinite
from scene3d.runs import RunDir
from scene3d.train import RunConfig, Stepper


def test_first_nonfinite_names_the_tensor():
    a, b, c = torch.ones(3), torch.tensor([1.0, float("inf")]), torch.tensor([float("nan")])
    assert first_nonfinite([("a", a), ("b", b), ("c", c)]) == "b"
    assert first_nonfinite([("a", a), ("none", None), ("int", torch.ones(2, dtype=torch.long))]) is None


def test_stop_mode_raises_one_line_naming_step_tensor_and_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(10, {"w": torch.ones(2)})
    guard = FiniteGuard("stop", run.path / "checkpoints")
    assert guard.loss(11, torch.tensor(0.5))
    with pytest.raises(NonFiniteError) as info:
        guard.loss(12, torch.tensor(float("nan")), "loss/rgb")
    msg = str(info.value)
    assert "\n" not in msg and "step 12" in msg and "'loss/rgb'" in msg and "step_0000010.safetensors" in msg
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.tensor([0.0, float("inf")])
    with pytest.raises(NonFiniteError, match="gradient 'w.grad'"):
        guard.gradients(13, [("w", w)])
    with torch.no_grad():
        w[0] = float("nan")
    with pytest.raises(NonFiniteError, match="parameter 'w'"):
        guard.parameters(14, [("w", w)])


def test_skip_mode_skips_then_gives_up_after_too_many_in_a_row():
    guard = FiniteGuard("skip", max_consecutive_skips=2)
    nan = torch.tensor(float("nan"))
    assert guard.loss(1, nan) is False and guard.loss(2, nan) is False
    with pytest.raises(NonFiniteError, match="step 3"):
        guard.loss(3, nan)
    assert guard.skipped == [1, 2]
    with pytest.raises(ValueError):
        FiniteGuard("ignore")


def test_fault_hook_makes_one_step_nan(monkeypatch):
    monkeypatch.setenv("SCENE3D_FAULT_NAN_STEP", "5")
    guard = FiniteGuard("skip")
    assert guard.loss(4, torch.tensor(1.0)) and not guard.loss(5, torch.tensor(1.0))


# the training loops ---------------------------------------------------------------------------
def _field_config(tmp_path, **kw):
    from scene3d.fields.train import FitConfig

    kw = {"steps": 6, **kw}
    run = RunConfig(output_root=tmp_path, name="r", checkpoint_every=2, eval_every=1000, progress=False,
                    nonfinite=kw.pop("nonfinite", "stop"))
    return FitConfig(field="mlp", eval_views=1, batch_rays=32, n_samples=8, n_train_views=2, n_test_views=1,
                     image_size=12, turntable_frames=0, run=run, **kw)


def test_field_fitting_stops_on_a_real_nan_keeping_the_last_good_checkpoint(tmp_path):
    from scene3d.fields.train import FieldTrainer, fit_field, load_data

    config = _field_config(tmp_path, steps=4)
    train, test = load_data(config)
    trainer, _ = fit_field(config, train, test)
    with torch.no_grad():
        next(trainer.field.parameters()).fill_(float("nan"))  # a diverged weight
    good = load_checkpoint(RunDir(tmp_path / "fields" / "r").latest_checkpoint())[0]
    with pytest.raises(NonFiniteError, match="step 5: loss 'loss'"):
        Stepper(trainer, step=4)()
    assert torch.isfinite(good["field"][next(iter(good["field"]))]).all()
    assert isinstance(trainer, FieldTrainer)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_field_fitting_nan_step(tmp_path, monkeypatch, mode):
    from scene3d.fields.train import fit_field, load_data

    monkeypatch.setenv("SCENE3D_FAULT_NAN_STEP", "3")
    config = _field_config(tmp_path, nonfinite=mode)
    train, test = load_data(config)
    run = RunDir(tmp_path / "fields" / "r")
    if mode == "stop":
        with pytest.raises(NonFiniteError, match="step 3") as info:
            fit_field(config, train, test, run=run)
        assert [s for s, _ in run.checkpoints()] == [2] and "step_0000002" in str(info.value)
        load_checkpoint(run.latest_checkpoint())
    else:
        _, metrics = fit_field(config, train, test, run=run)
        assert metrics["nonfinite_skipped_steps"] == 1 and metrics["steps"] == 6


def _nan_run(monkeypatch, mode, fn, checkpoints_dir):
    monkeypatch.setenv("SCENE3D_FAULT_NAN_STEP", "3")
    if mode == "stop":
        with pytest.raises(NonFiniteError, match="step 3"):
            fn()
        steps = sorted(p.name for p in checkpoints_dir.glob("step_*.safetensors"))
        assert steps == ["step_0000002.safetensors"], steps
        return None
    return fn()


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_splat_fitting_nan_step(tmp_path, monkeypatch, mode):
    from scene3d.gaussians.train import FitConfig, fit_splats

    run = RunConfig(output_root=tmp_path, name="r", checkpoint_every=2, eval_every=1000, progress=False, resume=False,
                    nonfinite=mode)
    cfg = FitConfig(steps=4, n_init=100, world_views=(2, 1, 1), world_size=12, turntable_frames=1, export_mesh=False,
                    run=run)
    out = _nan_run(monkeypatch, mode, lambda: fit_splats(cfg)[1], tmp_path / "splats" / "r" / "checkpoints")
    assert out is None or (out["steps"] == 4 and out["nonfinite_skipped_steps"] == 1)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_avfm_pretraining_nan_step(tmp_path, monkeypatch, mode):
    import json

    from avfm.train import DataConfig, TeacherConfig, TrainConfig, train

    run = RunConfig(output_root=tmp_path, name="r", checkpoint_every=2, progress=False, nonfinite=mode)
    cfg = TrainConfig(data=DataConfig(source="toy", n_train=4, n_val=0, resolution=32),
                      teacher=TeacherConfig(name="random_vit"), steps=4, batch_size=2, standardizer_scenes=4, run=run)
    out = _nan_run(monkeypatch, mode, lambda: train(cfg), tmp_path / "avfm" / "r" / "checkpoints")
    if mode == "skip":
        metrics = json.loads((tmp_path / "avfm" / "r" / "metrics.json").read_text())
        assert out["steps"] == 4 and metrics["nonfinite_skipped_steps"] == 1 and metrics["steps"] == 4


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_prior_training_nan_step(tmp_path, monkeypatch, mode):
    import json

    from scene3d.diffusion.pixel import PixelPriorConfig
    from scene3d.diffusion.train_prior import TrainPriorConfig, train_prior

    cfg = TrainPriorConfig(steps=4, batch_size=2, n_objects_per_class=1, views_per_object=1, sample_every=0,
                           samples_per_class=1, sample_steps=1, warmup_steps=1,
                           prior=PixelPriorConfig(resolution=16, block_out_channels=(8, 8), norm_num_groups=4,
                                                  attention=False),
                           run=RunConfig(name="r", output_root=tmp_path, checkpoint_every=2, nonfinite=mode,
                                         progress=False))
    run = _nan_run(monkeypatch, mode, lambda: train_prior(cfg), tmp_path / "prior" / "r" / "checkpoints")
    if mode == "skip":
        metrics = json.loads((run.path / "metrics.json").read_text())
        assert metrics["nonfinite_skipped_steps"] == 1 and metrics["steps"] == 4


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_score_distillation_nan_step(tmp_path, monkeypatch, mode):
    from scene3d.diffusion.pixel import PixelPrior, PixelPriorConfig
    from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller, image_target
    from scene3d.distill.score.guidance import make_guidance
    from scene3d.train import fit

    torch.manual_seed(0)
    prior = PixelPrior(PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4,
                                        attention=False)).freeze()
    target, logits = image_target(8)
    distiller = ScoreDistiller(prior, make_guidance("sds", prior), [target],
                               DistillConfig(steps=4, batch_size=1, render_size=8))
    run = RunDir(tmp_path / "score")
    config = RunConfig(checkpoint_every=2, nonfinite=mode, progress=False)
    result = _nan_run(monkeypatch, mode, lambda: fit(distiller, run, config, 4), run.path / "checkpoints")
    if mode == "skip":
        assert result.steps == 4 and result.skipped_steps == [3] and torch.isfinite(logits).all()
