"""Patch encoders by name: every registered one built at random weights (no hub here) with its authors' construction,
its width probed at its native input size, local weights from a file or a snapshot folder, a fast offline failure."""

from __future__ import annotations

import time

import pytest
import torch

from common.errors import UserError
from common.registry import create, names
from methods.m4 import encoders
from methods.m4.config import ExtractConfig
from methods.m4.encoders import HOPTIMUS, IMAGENET, LUNIT, build_backbone

# name: (feature width, native input size, normalisation); widths as the model cards and TRIDENT give them.
EXPECTED = {
    "retccl": (2048, 256, IMAGENET),
    "resnet50_trunc": (1024, 224, IMAGENET),
    "uni_v1": (1024, 224, IMAGENET),
    "uni_v2": (1536, 224, IMAGENET),
    "virchow": (2560, 224, IMAGENET),
    "virchow2": (2560, 224, IMAGENET),
    "hoptimus0": (1536, 224, HOPTIMUS),
    "hoptimus1": (1536, 224, HOPTIMUS),
    "h0-mini": (1536, 224, HOPTIMUS),
    "gigapath": (1536, 224, IMAGENET),
    "lunit-vits8": (384, 224, LUNIT),
}
CNN = ("retccl", "resnet50_trunc")


def random_backbone(name: str, **kwargs) -> encoders.Backbone:
    """At random weights; the ViTs shrunk to one block (the width does not depend on depth)."""
    shrink = {"depth": 1} if name in EXPECTED and name not in CNN else {}
    with pytest.warns(UserWarning, match="RANDOM"):
        return build_backbone(ExtractConfig(backbone=name, weights="random", **kwargs), allow_random=True, **shrink)


def test_every_registered_encoder_is_expected():
    assert names("m4.encoder") == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_encoder_width_input_size_and_normalisation(name):
    width, size, (mean, std) = EXPECTED[name]
    bb = random_backbone(name)
    assert (bb.dim, bb.input_size, bb.mean, bb.std) == (width, size, mean, std)
    assert bb.meta == {
        "encoder": name,
        "weights": "random",
        "feature_dim": width,
        "input_size": size,
        "mean": mean,
        "std": std,
        "embedding": encoders.ENCODERS[name].embedding,
    }
    with torch.inference_mode():
        assert bb.model(torch.rand(2, 3, size, size)).shape == (2, width)


def test_virchow_embedding_is_the_class_token_and_the_mean_of_patch_tokens():
    """Virchow2 has 4 register tokens after the class token: they are left out of the mean (tokens[:, 5:])."""
    torch.manual_seed(0)
    model = create("m4.encoder", "virchow2", depth=1).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        tokens = model.vit(x)
        assert tokens.shape == (1, 5 + 16 * 16, 1280)
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
        torch.testing.assert_close(model(x), expected)
    mlp = model.vit.blocks[0].mlp  # SwiGLUPacked: one fc1 for gate and value, SiLU
    assert (mlp.fc1.out_features, mlp.fc2.in_features) == (6832, 3416) and isinstance(mlp.act, torch.nn.SiLU)


def test_fixed_size_vit_is_probed_at_its_native_size():
    """vit_small_patch16_224 refuses other sizes: probed at 224, not a fixed small size; another size is one line."""
    bb = random_backbone("vit_small_patch16_224")
    assert (bb.dim, bb.input_size) == (384, 224)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="input_size=256: .* takes 224-px inputs"):
        build_backbone(ExtractConfig(backbone="vit_small_patch16_224", weights="random", input_size=256), True)
    assert random_backbone("resnet18", input_size=32).input_size == 32  # a CNN takes the size it is given


def test_local_weights_from_a_file_or_a_snapshot_folder(tmp_path):
    from safetensors.torch import save_file
    from timm.models import save_for_hf

    torch.manual_seed(0)
    ref = create("m4.encoder", "lunit-vits8").eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "w.pth")
    save_for_hf(ref, tmp_path / "snapshot", model_args={"img_size": 224}, safe_serialization=True)  # config.json too
    bare = tmp_path / "bare"  # a folder with weights and no config.json
    bare.mkdir()
    save_file(ref.state_dict(), bare / "model.safetensors")
    x = torch.rand(2, 3, 224, 224)
    for weights in (tmp_path / "w.pth", tmp_path / "snapshot", bare):
        bb = build_backbone(ExtractConfig(backbone="lunit-vits8", weights=str(weights)))
        assert bb.meta["weights"] == str(weights)
        with torch.inference_mode():
            torch.testing.assert_close(bb.model(x), ref(x))


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    small = create("m4.encoder", "lunit-vits8", depth=1, embed_dim=64, num_heads=2)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(UserError, match="do not fit vit_small_patch8_224 .*size mismatch"):
        build_backbone(ExtractConfig(backbone="lunit-vits8", weights=str(tmp_path / "small.pth")))
    torch.save(create("m4.encoder", "lunit-vits8", depth=1).state_dict(), tmp_path / "shallow.pth")
    with pytest.raises(UserError, match="weights miss .* backbone tensors"):
        build_backbone(ExtractConfig(backbone="lunit-vits8", weights=str(tmp_path / "shallow.pth")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json and no weights file"):
        build_backbone(ExtractConfig(backbone="lunit-vits8", weights=str(tmp_path / "empty")))


def test_unreachable_hub_fails_at_once_with_the_hint(monkeypatch):
    """No minute of retries (huggingface_hub's backoff) and no second warning: one line saying what to do."""
    from huggingface_hub import constants

    monkeypatch.setattr(encoders, "_reachable", lambda endpoint: False)
    before = constants.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"MahmoodLab/uni \(the hub is unreachable .*extract\.weights=<weights file"):
        build_backbone(ExtractConfig(backbone="uni_v1", weights="hub"))
    assert time.perf_counter() - start < 10
    assert constants.HF_HUB_OFFLINE == before  # restored for whatever runs next
