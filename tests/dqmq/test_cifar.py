"""CIFAR in torchvision's folder layout (the python release: `cifar-10-batches-py/data_batch_1..5`, `test_batch`,
`batches.meta`, pickled dicts with byte keys as the release's Python 2 pickles have them), read without torchvision's
md5 checks, and the CIFAR-10 ResNet-20 preset end to end on such a fixture; a batch holding any other object than
CIFAR's is refused, not run."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest

from common.config import compose
from common.errors import UserError
from methods.dqmq import commands
from methods.dqmq.data import _cifar

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).tolist()
    # A class-dependent mean colour, so that a short training has something to learn.
    data = rng.integers(0, 96, (n, 3072), dtype=np.uint8) + (np.array(labels, np.uint8)[:, None] * 16)
    record = {b"batch_label": b"fixture", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    path.write_bytes(pickle.dumps(record, protocol=2))


def cifar10_fixture(root, per_batch: int = 12, test: int = 20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _batch(folder / f"data_batch_{i}", per_batch, i)
    _batch(folder / "test_batch", test, 0)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_cifar10_python_release_is_read_in_order(tmp_path):
    root = cifar10_fixture(tmp_path / "cifar10")
    images = _cifar("cifar10", root, 32, download=False)
    assert images.classes == CLASSES and images.train_x.shape == (60, 3, 32, 32) and len(images.test_y) == 20
    first = pickle.loads((root / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")
    assert (images.train_x[0].numpy() == first[b"data"][0].reshape(3, 32, 32)).all()  # R, G, B planes
    assert images.train_y[:12].tolist() == first[b"labels"]


def test_a_batch_with_another_object_is_refused(tmp_path):
    root = cifar10_fixture(tmp_path / "cifar10")

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match=re.escape("test_batch: not a CIFAR python batch") + ".*system"):
        _cifar("cifar10", root, 32, download=False)


def test_cifar10_resnet20_preset_end_to_end(tmp_path):
    root = cifar10_fixture(tmp_path / "cifar10")
    cfg = compose(
        "dqmq",
        "+experiment=dqmq/cifar10_resnet20",
        f"data.root={root}",
        f"cache_dir={tmp_path / 'cache'}",
        "data.corruptions=[contrast]",
        "data.severities=[5]",
        "net.width=4",
        "quant.bits=[4,8]",
        "fixed_bits=[8]",
        "pretrain.trainer.epochs=1",
        "pretrain.trainer.batch_size=30",
        "trainer.epochs=1",
        "trainer.batch_size=30",
        "command=train",
    )
    metrics = commands.train(cfg, tmp_path / "run")
    assert {"dqmq/acc", "fp/acc", "w8a8/acc", "static/acc"} <= set(metrics)
    assert metrics["w8a8/bitops_ratio"] == pytest.approx(64 / 1024)
    assert (tmp_path / "run" / "dqmq" / "model" / "model.json").is_file()
