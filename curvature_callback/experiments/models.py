"""Networks of the experiments: a small CNN for quick runs, ResNets for the paper's (torchvision's own
``resnet18``/``resnet50`` serve ImageNet directly)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["SmallCNN", "resnet_cifar"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (``w``, ``2w``, ``4w`` channels; the last two stride 2), avg pool, linear.

    Any input size of at least 4x4 works: 8x8 digits end on a 2x2 map, 32x32 CIFAR images on an 8x8 one.

    Args:
        in_channels: input channels (1 for digits, 3 for CIFAR).
        num_classes: outputs (logits).
        width: channels of the first block.

    Example:
        >>> import torch
        >>> SmallCNN(in_channels=3, num_classes=100, width=8)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width, 1),
            _block(width, 2 * width, 2),
            _block(2 * width, 4 * width, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def resnet_cifar(depth: Literal[18, 34, 50] = 18, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool.

    On 32x32 inputs the ImageNet stem (7x7 stride 2, then max-pool) leaves an 8x8 map after one block; the CIFAR
    stem keeps 32x32 there and ends on 4x4, the ResNet18 of the memorization literature (11.2 M parameters).

    Args:
        depth: 18, 34 or 50.
        num_classes: outputs (logits).
        in_channels: input channels.

    Example:
        >>> import torch
        >>> net = resnet_cifar(18, num_classes=100)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([2, 100]), 11220132)
    """
    from torchvision import models

    builders = {18: models.resnet18, 34: models.resnet34, 50: models.resnet50}
    if depth not in builders:
        raise ValueError(f"Expected argument `depth` to be one of {sorted(builders)}, got {depth!r}.")
    net = builders[depth](weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
