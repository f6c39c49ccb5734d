"""Networks of the experiments."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


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
