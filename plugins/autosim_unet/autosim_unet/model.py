"""A small UNet for semantic segmentation, written for torch.func.

Layout for ``depth`` D (number of 2x down-samplings) and ``width`` w:

    encoder   D + 1 blocks of two 3x3 conv + GroupNorm + ReLU, channels w * 2**level
    decoder   D levels of (2x2 transposed conv, concatenation with the skip, two 3x3 convs)
    head      a 1x1 conv to class logits

That is 5 D + 3 convolutional layers; the default D = 1 gives the eight of the paper's UNet
(its reference implementation with two levels). GroupNorm instead of BatchNorm keeps the
forward pass a pure function of the parameters, which the HVPs and per-sample jvps need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_layer_count(depth: int) -> int:
    """Number of convolutional layers of a UNet of this depth (what ``freeze`` counts)."""
    return 5 * depth + 3


def _groups(channels: int, max_groups: int = 8) -> int:
    """The most groups (at most ``max_groups``) that divide ``channels``."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class ConvNormAct(nn.Module):
    """3x3 conv, GroupNorm, ReLU: one convolutional layer (its norm is frozen with it)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.GroupNorm(_groups(out_channels), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.first = ConvNormAct(in_channels, out_channels)
        self.second = ConvNormAct(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class UNet(nn.Module):
    """UNet mapping images (N, in_channels, H, W) to logits (N, num_classes, H, W).

    Any H, W works: inputs whose sides are not multiples of 2**depth are padded (edge
    replication) before the encoder and the logits are cropped back, so every pixel of the
    input gets a prediction and no pixel of the padding reaches the loss.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4, depth: int = 1, width: int = 16):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (got {depth})")
        if width < 1:
            raise ValueError(f"width must be >= 1 (got {width})")
        self.depth = depth
        channels = [width * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [Block(in_channels, channels[0])]
            + [Block(channels[i - 1], channels[i]) for i in range(1, depth + 1)]
        )
        # Decoder modules are stored in the order they run: deepest level first.
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(channels[i], channels[i - 1], 2, stride=2) for i in range(depth, 0, -1)]
        )
        self.decoder = nn.ModuleList([Block(2 * channels[i - 1], channels[i - 1]) for i in range(depth, 0, -1)])
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def conv_layers(self) -> list[nn.Module]:
        """The convolutional layers in the order the forward pass runs them."""
        layers: list[nn.Module] = []
        for block in self.encoder:
            layers += [block.first, block.second]
        for up, block in zip(self.upsample, self.decoder, strict=True):
            layers += [up, block.first, block.second]
        layers.append(self.head)
        return layers

    def freeze(self, count: int) -> list[str]:
        """Set requires_grad=False on the first ``count`` conv layers; returns the frozen names."""
        layers = self.conv_layers()
        if not 0 <= count <= len(layers):
            raise ValueError(f"freeze must be between 0 and {len(layers)} for depth {self.depth} (got {count})")
        frozen_ids = {id(p) for layer in layers[:count] for p in layer.parameters()}
        names = []
        for name, p in self.named_parameters():
            if id(p) in frozen_ids:
                p.requires_grad_(False)
                names.append(name)
        return names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        logits = self.head(x)
        return logits[..., :height, :width]
