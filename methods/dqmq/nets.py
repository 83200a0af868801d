"""Networks, registered as `dqmq.net`: a small CNN for digits, ResNet-20 for CIFAR (He et al. 2016, 0.27 M parameters
at width 16), and ResNet-18 / MobileNetV2 through timm. Each factory takes (num_classes, in_chans, width, pretrained)."""

from __future__ import annotations

from torch import nn

from common.errors import UserError
from common.registry import register


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register("dqmq.net", "digits_cnn")
def digits_cnn(num_classes: int, in_chans: int, width: int = 16, pretrained: bool = False) -> nn.Module:
    """Four 3x3 conv-BN-ReLU layers (two of stride 2), global average pooling, a linear classifier."""
    w = width
    return nn.Sequential(
        *_conv_bn(in_chans, w),
        *_conv_bn(w, 2 * w, 2),
        *_conv_bn(2 * w, 2 * w),
        *_conv_bn(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        # A projection shortcut (option B) where the shape changes: a conv the quantizer treats like the others.
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register("dqmq.net", "resnet20")
def resnet20(num_classes: int, in_chans: int, width: int = 16, pretrained: bool = False) -> nn.Module:
    """CIFAR ResNet-20: a 3x3 stem, three stages of three basic blocks (width, 2x, 4x; stride 2 between stages)."""
    layers: list[nn.Module] = [*_conv_bn(in_chans, width)]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def _timm(name: str):
    def build(num_classes: int, in_chans: int, width: int = 16, pretrained: bool = False) -> nn.Module:
        import timm

        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
        except (OSError, RuntimeError) as e:  # hub weights out of reach (offline) or not cached
            raise UserError(f"net.arch={name}: could not load pretrained weights ({str(e).splitlines()[0]})") from None

    build.__doc__ = f"timm's {name} (net.width is ignored; net.pretrained loads timm's hub weights)."
    return build


register("dqmq.net", "resnet18")(_timm("resnet18"))
register("dqmq.net", "mobilenetv2_100")(_timm("mobilenetv2_100"))
