"""The domains: the offline ones, ImageFolder roots and what is wrong with them, in one line each."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import compose
from common.errors import UserError
from methods.medmfg.data import OFFLINE_COUNTS, nuisance, offline_source, offline_target

SMALL = [  # episodes small enough for a 2-class folder of 3 images per class
    "eval.ways=2",
    "eval.shots=[1]",
    "eval.queries=2",
    "generator.ways=2",
    "generator.max_shot=1",
    "generator.queries=2",
    "tsne.ways=2",
]


def image_folder(root, counts: dict[str, int], size: int = 20):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_offline_domains():
    source, target = offline_source(), offline_target()
    assert len(source.classes) == 32 and min(source.counts().values()) >= 63
    assert len(target.classes) == 28 and set(target.counts().values()) == {60}
    assert [c.split("_")[0] for c in target.classes] == ["retina"] * 9 + ["ihc"] * 16 + ["cell"] * 3
    image = target.image(0)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    # The counts a config is checked with (no domain built) are the built domains', class order included.
    for counts, domain in ((OFFLINE_COUNTS["source"], source), (OFFLINE_COUNTS["target"], target)):
        assert list(counts.items()) == list(domain.counts().items())
    # The backbone's pretraining images are the source's (each re-oriented by its own draw), without the sensor noise:
    # the difference of neighbouring pixels, which the noise makes large, is larger in the source (20.7 against 3.5).
    clean = offline_source(acquired=False)
    assert clean.counts() == source.counts() and all(a.shape == b.shape for a, b in zip(clean.arrays, source.arrays))

    def roughness(images):
        x = np.stack(images).astype(np.float64)
        return np.abs(np.diff(x, axis=2)).mean()

    assert roughness(source.arrays[-200:]) > 1.5 * roughness(clean.arrays[-200:])  # photo patches (32 px)


def test_nuisance_keeps_shape_and_type_and_follows_its_draw():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    a, b = nuisance(image, np.random.default_rng(1)), nuisance(image, np.random.default_rng(1))
    assert a.shape == image.shape and a.dtype == np.uint8 and (a == b).all()
    assert not (a == nuisance(image, np.random.default_rng(2))).all()


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="neither one of offline nor an existing path"):
        compose("medmfg", f"data.target={tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match=r"no class folders"):
        compose("medmfg", f"data.target={tmp_path}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match=r"no images in its 2 class folders"):
        compose("medmfg", f"data.target={tmp_path}")


def test_a_class_with_too_few_images_is_named_with_its_count(tmp_path):
    root = image_folder(tmp_path / "isic", {"melanoma": 25, "nevus": 25, "keratosis": 7, "other": 30})
    with pytest.raises(UserError, match=re.escape("class 'keratosis' has 7 images, fewer than K+Q=20")):
        compose("medmfg", f"data.target={root}", "eval.ways=4")


def test_more_ways_than_classes_is_a_config_error(tmp_path):
    with pytest.raises(UserError, match=re.escape("config: eval.shots=5 + eval.queries: 29-way episodes, but offline")):
        compose("medmfg", "eval.ways=29")
    with pytest.raises(UserError, match="33-way episodes, but offline source has 32 classes"):
        compose("medmfg", "generator.ways=33")
    with pytest.raises(UserError, match="class 'retina_r1c1' has 60 images, fewer than K\\+Q=65"):
        compose("medmfg", "eval.shots=[1,50]")


def test_image_folders_end_to_end_and_an_unreadable_image(tmp_path):
    """Both domains from folders: features of every file, in class order; a broken file is named."""
    from methods.medmfg.backbone import cached_features

    source = image_folder(tmp_path / "source", {"a": 3, "b": 3, "c": 3})
    target = image_folder(tmp_path / "target", {"x": 3, "y": 4}, size=28)
    args = [f"data.source={source}", f"data.target={target}", "backbone.pretrain=false", "data.image_size=16"]
    cfg = compose("medmfg", *args, f"cache_dir={tmp_path / 'cache'}", *SMALL)
    features = cached_features(cfg)
    assert features.source.shape == (9, 64) and features.target.shape == (7, 64)
    assert features.target_classes == ["x", "y"] and features.target_labels.tolist() == [0] * 3 + [1] * 4
    assert torch.isfinite(features.target).all()

    (target / "y" / "4.png").write_bytes(b"not a png")
    cfg = compose("medmfg", *args, f"cache_dir={tmp_path / 'cache2'}", *SMALL)
    with pytest.raises(UserError, match=re.escape(f"{target / 'y' / '4.png'}: cannot read image")):
        cached_features(cfg)
    written = (tmp_path / "cache2" / "medmfg" / "features").glob("*")
    assert not [p for p in written if not p.name.startswith(".")]  # no stage output (a lock file may stay)
