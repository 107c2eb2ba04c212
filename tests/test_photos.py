"""Real photographs (scikit-image's) as active-vision scenes: the source, eval-style canvas rollouts and the
viewer's glimpse session on them."""

import pytest
import torch

from avfm.data import PHOTOS, load_scenes, photo_paths, photos
from avfm.evaluate import canvas_features
from avfm.model import build_model
from scene3d.errors import DataError
from viewer.glimpse import GlimpseSession  # noqa: E402


def test_photos_source():
    s = load_scenes("photos", 10, 48, seed=0)
    assert s.images.shape == (10, 3, 48, 48) and s.labels is None
    assert s.images.min() >= 0 and s.images.max() <= 1
    means = s.images.mean((1, 2, 3))
    assert len({round(float(m), 3) for m in means}) == 10  # ten different pictures (8 photos, 2 crops)
    torch.testing.assert_close(photos(10, 48, seed=0).images, s.images)  # deterministic
    assert not torch.equal(photos(10, 48, seed=1).images[8:], s.images[8:])  # crops follow the seed
    assert [p.name for p in photo_paths(("astronaut", "rocket"))] == ["astronaut.png", "rocket.jpg"]
    with pytest.raises(DataError, match="unknown photographs"):
        photo_paths(("lena",))
    assert len(PHOTOS) == 8


@torch.no_grad()
def test_glimpse_rollouts_on_photos_give_each_image_its_own_canvas():
    torch.manual_seed(0)
    model = build_model("canvit_tiny").eval()
    images = photos(4, 64).images
    grid = model.cfg.canvas_grid
    cells, cls = canvas_features(model, images, 3, torch.Generator().manual_seed(0), grid)
    assert cells.shape[:2] == (12, grid * grid) and cls.shape[0] == 12 and torch.isfinite(cells).all()
    pcas = []
    for image in images[:3]:
        session = GlimpseSession(model, image, None, "c2f", max_steps=4)
        while session.step() is not None:
            pass
        assert len(session.steps) == 4
        assert session.scene_with_boxes().shape == (64, 64, 3)
        pcas.append(session.canvas_pca(32))
        assert pcas[-1].shape == (32, 32, 3)
    again = GlimpseSession(model, images[0], None, "c2f", max_steps=4)
    while again.step() is not None:
        pass
    torch.testing.assert_close(again.canvas_pca(32), pcas[0])  # same photo, same policy: same canvas
    for i in range(3):
        for j in range(i + 1, 3):
            assert (pcas[i] - pcas[j]).abs().mean() > 0.05, (i, j)  # the canvas depends on the photo
