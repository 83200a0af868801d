"""Mixed-quality data: seeded corruptions, severities that grow, the mixture, ImageFolder reading and its errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.config import compose
from common.errors import UserError
from methods.dqmq import data as dq

_DIGITS: dict[str, dq.Images] = {}


def digits() -> dq.Images:
    if not _DIGITS:
        _DIGITS["d"] = dq.load_images(compose("dqmq").data, "data", 0)
    return _DIGITS["d"]


def test_digits_split_and_shapes():
    d = digits()
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 16, 16)
    assert len(d.train_y) + len(d.test_y) == 1797 and abs(len(d.test_y) / 1797 - 0.3) < 0.01
    assert sorted(set(d.test_y.tolist())) == list(range(10)) and d.classes == [str(i) for i in range(10)]


def test_corruptions_are_deterministic_under_a_seed():
    d = digits()
    levels = dq.quality_levels(list(dq.CORRUPTIONS), [1, 3, 5])
    weights = dq.mixture_weights(levels, 0.2)
    a = dq.MixedQuality(d.train_x[:60], d.train_y[:60], levels, weights, copies=2, seed=5)
    b = dq.MixedQuality(d.train_x[:60], d.train_y[:60], levels, weights, copies=2, seed=5)
    c = dq.MixedQuality(d.train_x[:60], d.train_y[:60], levels, weights, copies=2, seed=6)
    assert torch.equal(a.level_of, b.level_of) and not torch.equal(a.level_of, c.level_of)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    noise = dq.Level("gaussian_noise", 3)
    image = d.train_x[0]
    assert torch.equal(dq.corrupt(image, noise, 11), dq.corrupt(image, noise, 11))
    assert not torch.equal(dq.corrupt(image, noise, 11), dq.corrupt(image, noise, 12))
    before = torch.rand(3)
    torch.manual_seed(0)
    dq.corrupt(image, noise, 11)
    assert torch.equal(torch.rand(3), (torch.manual_seed(0), torch.rand(3))[1])  # the global generator is left alone
    assert not torch.equal(before, torch.rand(3))
    assert torch.equal(dq.at_level(d.test_x[:20], noise, 0), dq.at_level(d.test_x[:20], noise, 0))


@pytest.mark.parametrize("corruption", dq.CORRUPTIONS)
def test_every_corruption_distorts_more_as_severity_grows(corruption):
    x = digits().test_x[:40]
    clean = dq.at_level(x, dq.Level("clean"), 0)
    errors = [float((dq.at_level(x, dq.Level(corruption, s), 0) - clean).pow(2).mean()) for s in range(1, 6)]
    assert 0 < errors[0] and all(a < b for a, b in zip(errors, errors[1:])), errors
    assert dq.at_level(x, dq.Level(corruption, 5), 0).shape == clean.shape


def test_the_mixture_and_its_tags():
    levels = dq.quality_levels(["jpeg", "gaussian_blur"], [5, 2])
    assert [lv.name for lv in levels] == ["clean", "jpeg-2", "jpeg-5", "gaussian_blur-2", "gaussian_blur-5"]
    weights = dq.mixture_weights(levels, 0.2)
    assert weights[0] == 0.2 and abs(sum(weights) - 1) < 1e-12 and len(set(weights[1:])) == 1
    d = digits()
    mixed = dq.MixedQuality(d.train_x, d.train_y, levels, weights, copies=3, seed=0)
    assert len(mixed) == 3 * len(d.train_y)
    share = np.bincount(mixed.level_of.numpy(), minlength=5) / len(mixed)
    assert abs(share[0] - 0.2) < 0.02 and all(abs(s - 0.2) < 0.02 for s in share[1:])
    image, label, level = mixed[len(d.train_y) + 4]  # the second draw of image 4
    assert label == int(d.train_y[4]) and level == int(mixed.level_of[len(d.train_y) + 4])
    batch = dq.collate([mixed[i] for i in range(8)])
    assert (
        batch["x"].dtype == torch.float32
        and batch["x"].max() <= 1
        and batch["level"].tolist() == mixed.level_of[:8].tolist()
    )
    torch.manual_seed(0)
    augmented = dq.collate([mixed[i] for i in range(8)], augment=True)
    assert augmented["x"].shape == batch["x"].shape and not torch.equal(augmented["x"], batch["x"])


def _png(path, value: int, size: int = 10) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_image_folder_reads_real_files_and_skips_an_unreadable_one(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c, value in (("cat", 40), ("dog", 200)):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", value, size=10 + i)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    cfg = compose("dqmq", "data.dataset=imagefolder", f"data.root={tmp_path}", "data.image_size=8").data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = dq.load_images(cfg, "data", 0)
    assert any("skipped 1 unreadable image(s)" in str(w.message) and "broken.png" in str(w.message) for w in caught)
    assert (
        images.classes == ["cat", "dog"]
        and images.train_x.shape == (6, 3, 8, 8)
        and images.test_x.shape == (4, 3, 8, 8)
    )
    assert images.train_y.tolist() == [0, 0, 0, 1, 1, 1] and int(images.train_x[0].float().mean()) == 40

    _png(tmp_path / "val" / "bird" / "0.png", 90)
    with pytest.raises(
        UserError, match=r"val: class folders \['bird', 'cat', 'dog'\] differ from the training split's"
    ):
        dq.load_images(cfg, "data", 0)
    with pytest.raises(UserError, match="an ImageFolder needs train/ and val/"):
        dq.load_images(compose("dqmq", "data.dataset=imagefolder", f"data.root={tmp_path / 'train'}").data, "data", 0)
