"""Saturation and recognition metrics of distilled renders; the eval (chance-corrected, combined over
seeds) and distill runs."""

import json

import pytest
import torch

from scene3d.distill.score.evaluate import foreground, recognition, saturation


def test_saturation_of_grey_and_pure_colours():
    img = torch.ones(2, 3, 4, 4)
    img[0, :, :2] = 0.5  # grey object on white: saturation 0
    img[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red: saturation 1
    assert foreground(img).sum() == 16
    assert abs(saturation(img[:1])) < 1e-6 and abs(saturation(img[1:]) - 1) < 1e-6
    assert abs(saturation(img) - 0.5) < 1e-6


def test_recognition_fraction():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot((x.mean((1, 2, 3)) > 0.5).long(), 2).float()

    images = torch.cat([torch.zeros(3, 3, 2, 2), torch.ones(1, 3, 2, 2)])
    assert recognition(Fixed(), images, 0) == 0.75 and recognition(Fixed(), images, 1) == 0.25


def test_voxel_target_renders_a_blob_and_is_differentiable():
    from scene3d.distill.score.targets import voxel_target
    from scene3d.distill.score.views import orbit_views

    target, scene = voxel_target()
    scene.eval()
    images = target.render(orbit_views(2, 16))
    assert images.shape == (2, 3, 16, 16)
    assert torch.allclose(images[:, :, 0, 0], torch.ones(2, 3), atol=1e-3)  # corners see the background
    assert (images[:, :, 8, 8] < 0.7).all()  # the initial density blob in the middle (grey colour 0.5)
    images.mean().backward()
    assert scene.grid.grad is not None and scene.grid.grad.abs().sum() > 0


def test_eval_score_writes_its_report_and_combines_seeds(tmp_path):
    from lab.eval.score import METRICS, EvalScoreConfig, evaluate_score
    from scene3d.diffusion import PixelPrior, PixelPriorConfig
    from scene3d.diffusion.classifier import ClassifierConfig, train_classifier
    from scene3d.distill.score.geometry import ShapeCheckConfig
    from scene3d.distill.score.targets import TargetOptions
    from scene3d.errors import DataError
    from scene3d.train import RunConfig

    torch.manual_seed(0)
    PixelPrior(PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4,
                                attention=False)).save_pretrained(tmp_path / "prior")
    train_classifier(ClassifierConfig(resolution=16, channels=(8,), n_objects_per_class=1, views_per_object=2,
                                      n_val_objects_per_class=1, steps=2, batch_size=4,
                                      run=RunConfig(name="clf", output_root=tmp_path, progress=False)))

    def run(seed: int, out: str, steps: int = 2):
        return evaluate_score(EvalScoreConfig(
            prior=tmp_path / "prior", classifier=tmp_path / "classifier" / "clf", guidances=("sds", "ism"),
            targets=("image", "splats"), prompts=("box", "torus"), seeds=(seed,), steps=steps, render_size=16,
            n_views=2, speed_size=16, speed_steps=1,
            shape=ShapeCheckConfig(size=24, resolution=20, fit_steps=5, fit_starts=1),
            target_options=TargetOptions(image_size=16), out=tmp_path / "bench" / out))

    result = run(0, "s0.json")
    out = tmp_path / "bench" / "s0.json"
    assert out.is_file() and out.with_suffix(".png").is_file() and (tmp_path / "bench" / "s0_table.png").is_file()
    assert len(result["runs"]) == 2 * 2 * 2 and len(result["initial"]) == 2 * 2 and result["seeds"] == [0]
    for record in result["runs"]:
        assert 0 <= record["recognition"] <= 1 and record["cpu_minutes"] > 0
        if record["target"] == "image":  # no 3D surface, no shape check
            assert record["shape"] is None and record["shape_pass"] is None
        else:
            assert record["shape"]["nearest"] in ("sphere", "box", "cylinder", "torus")
            assert isinstance(record["shape_pass"], bool)
    initial = {(r["target"], r["prompt"]): r["recognition"] for r in result["initial"]}
    for key in ("sds/image", "ism/image", "sds/splats", "ism/splats"):
        summary = result["summary"][key]
        assert set(METRICS) <= set(summary) and set(summary["torus_tunnels"]) <= {0}
        runs = [r for r in result["runs"] if f"{r['guidance']}/{r['target']}" == key]
        expected = sum(r["recognition"] - initial[(r["target"], r["prompt"])] for r in runs) / len(runs)
        assert summary["gain"]["per_seed"] == [pytest.approx(expected)]
    assert set(result["guidance_steps_per_second"]) == {"sds", "ism"}
    nulls = result["null_label_rates"]  # blank, clutter and untrained-student renders, labels incl. `none`
    assert set(nulls) == {"blank", "clutter", "field_init", "splats_init"}
    assert all(set(r) == {"sphere", "box", "cylinder", "torus", "none"} for r in nulls.values())
    assert all(abs(sum(r.values()) - 1) < 1e-5 for r in nulls.values())

    run(1, "s1.json")
    both = evaluate_score(EvalScoreConfig(combine=(out, tmp_path / "bench" / "s1.json"), out=tmp_path / "all.json"))
    assert both["seeds"] == [0, 1] and len(both["runs"]) == 16
    assert len(both["summary"]["sds/splats"]["gain"]["per_seed"]) == 2
    with pytest.raises(DataError, match="twice"):
        evaluate_score(EvalScoreConfig(combine=(out, out), out=tmp_path / "dup.json"))
    partial = json.loads((tmp_path / "bench" / "s1.json").read_text())
    partial["runs"] = partial["runs"][:-1]  # an evaluation stopped before its last run
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(DataError, match="unfinished"):
        evaluate_score(EvalScoreConfig(combine=(out, tmp_path / "partial.json"), out=tmp_path / "p.json"))
    run(2, "s2.json", steps=3)
    with pytest.raises(DataError, match="config.steps"):
        evaluate_score(EvalScoreConfig(combine=(out, tmp_path / "bench" / "s2.json"), out=tmp_path / "bad.json"))


@pytest.mark.parametrize(("target", "export"), [("splats", "splats.ply"), ("field", "mesh.ply")])
def test_distill_score_run_writes_views_turntable_and_export(tmp_path, target, export):
    from scene3d.diffusion import PixelPrior, PixelPriorConfig
    from scene3d.distill.score.distiller import DistillConfig
    from scene3d.distill.score.geometry import ShapeCheckConfig
    from scene3d.distill.score.run import DistillScoreConfig, distill_score
    from scene3d.distill.score.targets import FieldTargetConfig, SplatTargetConfig, TargetOptions
    from scene3d.errors import DataError
    from scene3d.runs import RunDir
    from scene3d.train import RunConfig

    torch.manual_seed(0)
    PixelPrior(PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4,
                                attention=False)).save_pretrained(tmp_path / "prior")
    options = TargetOptions(field=FieldTargetConfig(samples=12, mesh_views=4, mesh_size=16),
                            splats=SplatTargetConfig(n_gaussians=200))
    config = DistillScoreConfig(prior=tmp_path / "prior", guidance="vsd", target=target, classifier=None,
                                turntable_frames=4, view_size=16, targets=options,
                                shape=ShapeCheckConfig(size=24, resolution=20, fit_steps=5, fit_starts=1),
                                particles=2 if target == "splats" else 1,
                                distill=DistillConfig(prompt="torus", steps=2, batch_size=2, render_size=16),
                                run=RunConfig(output_root=tmp_path, log_every=1, progress=False))
    metrics = distill_score(config)
    run = tmp_path / "score" / f"torus_vsd_{target}_s0"
    for name in ("views.png", "turntable.gif", "metrics.json", "scalars.jsonl", "config.json", export):
        assert (run / name).is_file(), name
    assert 0 <= metrics["saturation"] <= 1 and metrics["steps_per_second"] > 0
    assert metrics["shape"]["nearest"] in ("sphere", "box", "cylinder", "torus")  # a blob after 2 steps:
    assert metrics["shape_pass"] is False  # not a torus
    assert json.loads((run / "metrics.json").read_text())["saturation"] == metrics["saturation"]
    assert [s for s, _ in RunDir(run).checkpoints()] == [2]
    if target == "splats":  # VSD with two particles: the second one exported beside the first
        assert (run / "particle1" / "splats.ply").is_file() and (run / "particle1" / "turntable.gif").is_file()
    assert any((run / "tb").iterdir())  # TensorBoard events
    config.guidance = "dds"
    with pytest.raises(DataError, match="guidance"):
        distill_score(config)


def test_distill_score_cli_takes_prompt_without_prefix():
    import tyro

    from scene3d.distill.score.run import DistillScoreConfig

    config = tyro.cli(DistillScoreConfig, args=["--guidance", "vsd", "--target", "splats", "--prompt", "box",
                                                "--steps", "7", "--targets.splats.n-gaussians", "50",
                                                "--name", "mine", "--output-root", "elsewhere", "--checkpoint-every",
                                                "3", "--stop-after", "5", "--nonfinite", "skip"])
    assert (config.guidance, config.target, config.distill.prompt, config.distill.steps) == ("vsd", "splats", "box", 7)
    assert config.targets.splats.n_gaussians == 50
    assert (config.run_name, str(config.run.output_root), config.run.checkpoint_every) == ("mine", "elsewhere", 3)
    assert (config.run.stop_after, config.run.nonfinite) == (5, "skip")
    assert DistillScoreConfig().run_name == "sphere_sds_splats_s0"


def test_run_guidance_takes_the_schedule_and_vsd_estimator_lr():
    from scene3d.diffusion import PixelPrior, PixelPriorConfig
    from scene3d.distill.score.run import ScheduleConfig, make_run_guidance

    prior = PixelPrior(PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4, attention=False))
    schedule = ScheduleConfig(guidance_scale=3.0, t_max_end=0.4, estimator_lr=2e-3)
    vsd = make_run_guidance("vsd", prior, schedule, steps=100)
    assert vsd.config.guidance_scale == 3.0 and vsd.config.t_max_end == 0.4 and vsd.config.anneal_steps == 100
    assert vsd.optimizer.param_groups[0]["lr"] == 2e-3
    assert make_run_guidance("sds", prior, schedule, steps=10).config.guidance_scale == 3.0  # no estimator_lr
