"""YOLOv3-tiny and YOLOv3-spp as plain torch modules that mirror Darknet's cfgs layer by layer.

The two networks are written below as lists of layer specs, one entry per section of
Darknet's ``yolov3-tiny.cfg`` (24 layers, 0..23) and ``yolov3-spp.cfg`` (114 layers, 0..113),
so ``model.layers[i]`` is Darknet's layer ``i`` and ``freeze = N`` freezes layers 0..N-1 as
Darknet's numbering reads. Differences from Darknet, all on purpose:

* channels are Darknet's times ``width``, rounded to a multiple of 8 (at least 8); the
  detection convolutions keep ``A * (5 + C)`` outputs for ``C`` classes;
* the norm is GroupNorm (the default: a pure function of the parameters, which torch.func's
  HVPs and per-sample jvps need) or BatchNorm2d (Darknet's, needed for Darknet weights);
* the model returns the raw predictions of all heads as one tensor (see ``YOLOv3.forward``);
  decoding and the loss live in ``decode.py`` and ``loss.py``.

Weights load from a torch state dict or from Darknet's ``.weights`` (``load_weights``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .settings import YoloSettings

Variant = str  # "tiny" | "spp"


# ------------------------------------------------------------------------------ layer specs ---
@dataclass(frozen=True)
class Conv:
    """``[convolutional]`` with ``batch_normalize=1``, ``pad=1``, ``activation=leaky``."""

    filters: int
    size: int
    stride: int = 1


@dataclass(frozen=True)
class Detect:
    """The ``[convolutional]`` before a ``[yolo]``: 1x1, ``A * (5 + C)`` filters, bias, linear."""


@dataclass(frozen=True)
class MaxPool:
    """``[maxpool]``; Darknet pads ``size - 1`` cells, ``(size - 1) // 2`` of them before."""

    size: int
    stride: int


@dataclass(frozen=True)
class Route:
    """``[route]``: the channel concatenation of the layers named (relative if negative)."""

    layers: tuple[int, ...]


@dataclass(frozen=True)
class Shortcut:
    """``[shortcut] activation=linear``: the previous output plus layer ``source``'s."""

    source: int


@dataclass(frozen=True)
class Upsample:
    """``[upsample]``: nearest-neighbour upsampling by ``stride``."""

    stride: int = 2


@dataclass(frozen=True)
class Yolo:
    """``[yolo]``: a detection head using the variant's anchors ``mask``."""

    mask: tuple[int, ...]


Spec = Conv | Detect | MaxPool | Route | Shortcut | Upsample | Yolo


def _residual(filters: int, count: int) -> list[Spec]:
    """Darknet-53's residual blocks: ``count`` x (1x1 conv to half, 3x3 conv back, shortcut -3)."""
    return [spec for _ in range(count) for spec in (Conv(filters // 2, 1), Conv(filters, 3), Shortcut(-3))]


# yolov3-tiny.cfg. Its second head uses anchors 0,1,2 as in pjreddie's current cfg; the cfg
# first published with yolov3-tiny (and AlexeyAB's fork, which many copies follow) says
# mask = 1,2,3, a known quirk that reuses anchor 3 and never uses anchor 0.
TINY_LAYERS: list[Spec] = [
    Conv(16, 3),            # 0
    MaxPool(2, 2),          # 1   stride 2
    Conv(32, 3),            # 2
    MaxPool(2, 2),          # 3   stride 4
    Conv(64, 3),            # 4
    MaxPool(2, 2),          # 5   stride 8
    Conv(128, 3),           # 6
    MaxPool(2, 2),          # 7   stride 16
    Conv(256, 3),           # 8   (routed to the stride-16 head)
    MaxPool(2, 2),          # 9   stride 32
    Conv(512, 3),           # 10
    MaxPool(2, 1),          # 11  stride 32 still: padded bottom/right
    Conv(1024, 3),          # 12
    Conv(256, 1),           # 13
    Conv(512, 3),           # 14
    Detect(),               # 15
    Yolo((3, 4, 5)),        # 16  stride 32
    Route((-4,)),           # 17  -> 13
    Conv(128, 1),           # 18
    Upsample(2),            # 19  stride 16
    Route((-1, 8)),         # 20
    Conv(256, 3),           # 21
    Detect(),               # 22
    Yolo((0, 1, 2)),        # 23  stride 16
]

# yolov3-spp.cfg: Darknet-53 (layers 0..74), the head of yolov3.cfg with an SPP block
# (layers 78..83) after its third convolution, and three heads.
SPP_LAYERS: list[Spec] = [
    Conv(32, 3),                                            # 0
    Conv(64, 3, 2),                                         # 1   stride 2
    *_residual(64, 1),                                      # 2..4
    Conv(128, 3, 2),                                        # 5   stride 4
    *_residual(128, 2),                                     # 6..11
    Conv(256, 3, 2),                                        # 12  stride 8
    *_residual(256, 8),                                     # 13..36 (36 routed to the stride-8 head)
    Conv(512, 3, 2),                                        # 37  stride 16
    *_residual(512, 8),                                     # 38..61 (61 routed to the stride-16 head)
    Conv(1024, 3, 2),                                       # 62  stride 32
    *_residual(1024, 4),                                    # 63..74
    Conv(512, 1), Conv(1024, 3), Conv(512, 1),              # 75..77
    MaxPool(5, 1),                                          # 78  SPP: pools of 5, 9 and 13 of layer 77
    Route((-2,)),                                           # 79  -> 77
    MaxPool(9, 1),                                          # 80
    Route((-4,)),                                           # 81  -> 77
    MaxPool(13, 1),                                         # 82
    Route((-1, -3, -5, -6)),                                # 83  -> 82, 80, 78, 77
    Conv(512, 1), Conv(1024, 3), Conv(512, 1),              # 84..86
    Conv(1024, 3),                                          # 87
    Detect(),                                               # 88
    Yolo((6, 7, 8)),                                        # 89  stride 32
    Route((-4,)),                                           # 90  -> 86
    Conv(256, 1),                                           # 91
    Upsample(2),                                            # 92  stride 16
    Route((-1, 61)),                                        # 93
    Conv(256, 1), Conv(512, 3), Conv(256, 1),               # 94..96
    Conv(512, 3), Conv(256, 1), Conv(512, 3),               # 97..99
    Detect(),                                               # 100
    Yolo((3, 4, 5)),                                        # 101 stride 16
    Route((-4,)),                                           # 102 -> 98
    Conv(128, 1),                                           # 103
    Upsample(2),                                            # 104 stride 8
    Route((-1, 36)),                                        # 105
    Conv(128, 1), Conv(256, 3), Conv(128, 1),               # 106..108
    Conv(256, 3), Conv(128, 1), Conv(256, 3),               # 109..111
    Detect(),                                               # 112
    Yolo((0, 1, 2)),                                        # 113 stride 8
]

LAYERS: dict[str, list[Spec]] = {"tiny": TINY_LAYERS, "spp": SPP_LAYERS}
LEAKY_SLOPE = 0.1
# Initial objectness probability: the objectness term averages over every prediction, almost
# all background, so starting at p = 0.5 would spend the first steps pushing all of them down
# (the prior of RetinaNet and the YOLOv5 family).
OBJECTNESS_PRIOR = 0.01


def cfg_layers(variant: Variant) -> list[Spec]:
    """The layer specs of a variant, in Darknet's order."""
    try:
        return LAYERS[variant]
    except KeyError:
        raise ValueError(f"unknown yolo variant {variant!r}; allowed: {', '.join(LAYERS)}") from None


def _absolute(index: int, at: int) -> int:
    """A route/shortcut reference of layer ``at`` as an absolute layer index."""
    return at + index if index < 0 else index


@functools.cache
def head_layout(variant: Variant) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """``(stride, anchor mask)`` of each YOLO head in the cfg's order (coarsest first).

    Strides are traced through the specs rather than written down, so they follow the cfg.
    """
    strides: list[int] = []
    heads = []
    for i, spec in enumerate(cfg_layers(variant)):
        previous = strides[-1] if strides else 1
        if isinstance(spec, Conv | MaxPool):
            stride = previous * spec.stride
        elif isinstance(spec, Upsample):
            stride = previous // spec.stride
        elif isinstance(spec, Route):
            sources = {strides[_absolute(j, i)] for j in spec.layers}
            if len(sources) != 1:
                raise AssertionError(f"layer {i} routes layers of different strides {sources}")
            stride = sources.pop()
        else:
            stride = previous
        if isinstance(spec, Yolo):
            heads.append((stride, spec.mask))
        strides.append(stride)
    return tuple(heads)


def max_stride(variant: Variant) -> int:
    return max(stride for stride, _ in head_layout(variant))


def scaled_channels(filters: int, width: float) -> int:
    """Darknet's ``filters`` times ``width``, rounded to a multiple of 8 and at least 8."""
    return max(8, math.floor(filters * width / 8 + 0.5) * 8)


def group_count(channels: int) -> int:
    """GroupNorm's groups: at most 8 and at least 4 channels per group.

    Channels are multiples of 8 here, so this is 2, 4 or 8. Groups of one channel (instance
    norm) would normalise the 2x2 maps of the stride-32 head at small inputs over 4 values.
    """
    return math.gcd(max(1, channels // 4), 8)


# ---------------------------------------------------------------------------------- modules ---
class ConvLayer(nn.Module):
    """conv -> norm -> LeakyReLU(0.1), or a plain conv with bias (a detection conv)."""

    def __init__(self, in_channels: int, out_channels: int, size: int, stride: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, size, stride, padding=size // 2, bias=norm is None)
        self.norm: nn.Module | None
        if norm is None:
            self.norm = None
        elif norm == "group":
            self.norm = nn.GroupNorm(group_count(out_channels), out_channels)
        elif norm == "batch":
            self.norm = nn.BatchNorm2d(out_channels)
        else:
            raise ValueError(f"unknown norm {norm!r}; allowed: group, batch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is None:
            return x
        return F.leaky_relu(self.norm(x), LEAKY_SLOPE)


class MaxPoolLayer(nn.Module):
    """Darknet's max pool: ``size - 1`` cells of padding that never win, ``(size - 1) // 2`` before.

    With size 2 / stride 1 (yolov3-tiny's layer 11) that keeps the map size by padding only
    the bottom and right, as Darknet does.
    """

    def __init__(self, size: int, stride: int):
        super().__init__()
        self.size, self.stride = size, stride
        before = (size - 1) // 2
        self.padding = (before, size - 1 - before, before, size - 1 - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding[0] == 0 and self.stride > 1:
            # Padding only after: ceil_mode's partial last window is the same, without a copy.
            return F.max_pool2d(x, self.size, self.stride, ceil_mode=True)
        return F.max_pool2d(F.pad(x, self.padding, value=float("-inf")), self.size, self.stride)


class UpsampleLayer(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class RouteLayer(nn.Module):
    """Concatenation of earlier layers' outputs; ``sources`` are absolute layer indices."""

    def __init__(self, sources: tuple[int, ...]):
        super().__init__()
        self.sources = sources

    def extra_repr(self) -> str:
        return f"sources={self.sources}"


class ShortcutLayer(nn.Module):
    """Residual addition of layer ``source``'s output (absolute index)."""

    def __init__(self, source: int):
        super().__init__()
        self.source = source

    def extra_repr(self) -> str:
        return f"source={self.source}"


class YoloLayer(nn.Module):
    """A head: (B, A*(5+C), H, W) -> (B, A*H*W, 5+C), prediction index ``a*H*W + y*W + x``."""

    def __init__(self, mask: tuple[int, ...], stride: int, num_classes: int):
        super().__init__()
        self.mask, self.stride, self.num_classes = mask, stride, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.reshape(b, len(self.mask), 5 + self.num_classes, h, w)
        return x.permute(0, 1, 3, 4, 2).reshape(b, len(self.mask) * h * w, 5 + self.num_classes)

    def extra_repr(self) -> str:
        return f"mask={self.mask}, stride={self.stride}"


class YOLOv3(nn.Module):
    """YOLOv3-tiny or YOLOv3-spp; ``layers[i]`` is Darknet's layer ``i``.

    ``forward(images (B, 3, S, S))`` returns the raw predictions (B, N, 5 + C) of all heads
    concatenated in the cfg's order (coarsest stride first); within a head prediction
    ``a*H*W + y*W + x`` is anchor ``mask[a]`` at cell (x, y). The channels are tx, ty, tw, th,
    the objectness logit and C class logits. ``prediction_grid`` gives each prediction's cell,
    stride and anchor. S must be a multiple of the largest stride (32).
    """

    def __init__(self, variant: Variant = "tiny", num_classes: int = 3, width: float = 0.5,
                 norm: str = "group"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        if width <= 0:
            raise ValueError(f"width must be positive (got {width})")
        if norm not in ("group", "batch"):
            raise ValueError(f"unknown norm {norm!r}; allowed: group, batch")
        self.variant, self.num_classes, self.width, self.norm = variant, num_classes, width, norm
        specs = cfg_layers(variant)
        strides = iter(head_layout(variant))
        channels: list[int] = []
        layers: list[nn.Module] = []
        for i, spec in enumerate(specs):
            previous = channels[-1] if channels else 3
            layer: nn.Module
            if isinstance(spec, Conv):
                out = scaled_channels(spec.filters, width)
                layer = ConvLayer(previous, out, spec.size, spec.stride, norm)
            elif isinstance(spec, Detect):
                head = specs[i + 1]
                if not isinstance(head, Yolo):
                    raise AssertionError(f"layer {i}: a detection conv must precede a yolo layer")
                out = len(head.mask) * (5 + num_classes)
                layer = ConvLayer(previous, out, 1, 1, None)
                with torch.no_grad():
                    bias = layer.conv.bias.view(len(head.mask), 5 + num_classes)
                    bias[:, 4] = math.log(OBJECTNESS_PRIOR / (1 - OBJECTNESS_PRIOR))
            elif isinstance(spec, MaxPool):
                out, layer = previous, MaxPoolLayer(spec.size, spec.stride)
            elif isinstance(spec, Upsample):
                out, layer = previous, UpsampleLayer(spec.stride)
            elif isinstance(spec, Route):
                sources = tuple(_absolute(j, i) for j in spec.layers)
                out, layer = sum(channels[j] for j in sources), RouteLayer(sources)
            elif isinstance(spec, Shortcut):
                source = _absolute(spec.source, i)
                if channels[source] != previous:
                    raise AssertionError(f"layer {i}: shortcut of {channels[source]} onto {previous} channels")
                out, layer = previous, ShortcutLayer(source)
            elif isinstance(spec, Yolo):
                stride, mask = next(strides)
                out, layer = previous, YoloLayer(mask, stride, num_classes)
            else:
                raise AssertionError(f"unknown layer spec {spec!r}")
            channels.append(out)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        # Outputs that a later route or shortcut reads; the forward pass keeps only these.
        self._saved = frozenset(j for layer in layers if isinstance(layer, RouteLayer) for j in layer.sources) | \
            frozenset(layer.source for layer in layers if isinstance(layer, ShortcutLayer))
        self.frozen_layers = 0

    def parameter_layers(self) -> list[int]:
        """Indices of the layers holding parameters (the convolutional ones)."""
        return [i for i, layer in enumerate(self.layers) if any(True for _ in layer.parameters())]

    def freeze(self, count: int) -> list[str]:
        """Set requires_grad=False on layers 0..count-1; returns the frozen parameter names.

        At least one layer with parameters must stay trainable. Norm layers of frozen layers
        stay in eval mode (see ``train``), so training changes nothing in them.
        """
        with_params = self.parameter_layers()
        if not 0 <= count <= with_params[-1]:
            raise ValueError(f"freeze = {count} is out of range for yolo {self.variant}: it has "
                             f"{len(self.layers)} layers (0..{len(self.layers) - 1}) and the last with "
                             f"parameters is {with_params[-1]}, so freeze must be between 0 and {with_params[-1]}")
        names = []
        for name, p in self.named_parameters():
            p.requires_grad_(int(name.split(".")[1]) >= count)
            if not p.requires_grad:
                names.append(name)
        self.frozen_layers = count
        self.train(self.training)
        return names

    def train(self, mode: bool = True) -> YOLOv3:
        """As ``nn.Module.train``, but BatchNorm of frozen layers stays in eval mode: its
        running statistics are part of the frozen function."""
        super().train(mode)
        for layer in self.layers[: self.frozen_layers]:
            layer.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, S, S), got shape {tuple(images.shape)}")
        multiple = max_stride(self.variant)
        if images.shape[-1] % multiple or images.shape[-2] % multiple:
            raise ValueError(f"image sides must be multiples of {multiple}, got {tuple(images.shape[-2:])}")
        x = images
        saved: dict[int, torch.Tensor] = {}
        heads = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, RouteLayer):
                x = torch.cat([saved[j] for j in layer.sources], dim=1) if len(layer.sources) > 1 \
                    else saved[layer.sources[0]]
            elif isinstance(layer, ShortcutLayer):
                x = x + saved[layer.source]
            elif isinstance(layer, YoloLayer):
                heads.append(layer(x))
            else:
                x = layer(x)
            if i in self._saved:
                saved[i] = x
        return torch.cat(heads, dim=1)


# ---------------------------------------------------------------------- the prediction grid ---
def prediction_grid(settings: YoloSettings, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Per prediction, in the model's output order, (N,) tensors ``gx``, ``gy`` (cell),
    ``stride``, ``anchor_w``, ``anchor_h`` (pixels of this input size).

    Cached on the fields it depends on; the tensors are shared, so do not modify them.
    """
    anchors = tuple(tuple(a) for a in settings.anchors_px())
    return dict(_grid(settings.variant, settings.input_size, anchors, torch.device(device or "cpu"),
                      dtype or torch.get_default_dtype()))


@functools.lru_cache(maxsize=64)
def _grid(variant: Variant, input_size: int, anchors: tuple[tuple[float, float], ...], device: torch.device,
          dtype: torch.dtype) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("gx", "gy", "stride", "anchor_w", "anchor_h")}
    for stride, mask in head_layout(variant):
        if input_size % stride:
            raise ValueError(f"input_size = {input_size} must be a multiple of {stride}")
        side = input_size // stride
        cells = side * side
        gy, gx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        parts["gx"].append(gx.reshape(-1).repeat(len(mask)))
        parts["gy"].append(gy.reshape(-1).repeat(len(mask)))
        parts["stride"].append(torch.full((len(mask) * cells,), stride))
        parts["anchor_w"].append(torch.tensor([anchors[k][0] for k in mask]).repeat_interleave(cells))
        parts["anchor_h"].append(torch.tensor([anchors[k][1] for k in mask]).repeat_interleave(cells))
    return {k: torch.cat(v).to(device=device, dtype=dtype) for k, v in parts.items()}


def prediction_count(settings: YoloSettings) -> int:
    """N, the number of predictions per image at this input size."""
    return sum(len(mask) * (settings.input_size // stride) ** 2 for stride, mask in head_layout(settings.variant))


# ------------------------------------------------------------------------------ build, load ---
def build_yolo(settings: YoloSettings) -> YOLOv3:
    """The model the settings describe: weights loaded from ``settings.weights`` if given,
    then layers 0..freeze-1 frozen."""
    model = YOLOv3(settings.variant, settings.num_classes, settings.width, settings.norm)
    if settings.weights:
        load_weights(model, settings.weights)
    if settings.freeze:
        model.freeze(settings.freeze)
    return model


def load_weights(model: YOLOv3, path: str | Path) -> None:
    """Load a torch state dict file, or Darknet ``.weights`` (by the file's suffix)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"yolo weights: no file {str(path)!r}")
    if path.suffix == ".weights":
        load_darknet_weights(model, path)
    else:
        load_state_dict_file(model, path)


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """A torch state dict saved with ``torch.save`` (bare, or under ``"model"`` / ``"state_dict"``),
    read with ``weights_only=True``; keys and shapes must match the model exactly."""
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"yolo weights {str(path)!r}: not a torch state dict that loads with "
                         f"weights_only=True ({type(error).__name__}: {str(error).splitlines()[0]})") from error
    if isinstance(data, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"yolo weights {str(path)!r}: expected a state dict of tensors (or one under "
                         f"'model' / 'state_dict'), got {type(data).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in data]
    unexpected = [k for k in data if k not in own]
    wrong = [f"{k} {tuple(data[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in data and data[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"yolo weights {str(path)!r} do not fit this model ({_describe(model)}): "
                         f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}, "
                         f"wrong shapes {_few(wrong)}")
    model.load_state_dict(data, strict=True)


def _few(items: list[str], count: int = 8) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return "[" + ", ".join(items[:count]) + "]" + more


def _describe(model: YOLOv3) -> str:
    return f"variant={model.variant}, classes={model.num_classes}, width={model.width}, norm={model.norm}"


def _darknet_tensors(layer: ConvLayer) -> list[torch.Tensor]:
    """A conv layer's tensors in the order Darknet stores them."""
    if isinstance(layer.norm, nn.BatchNorm2d):
        norm = layer.norm
        return [norm.bias, norm.weight, norm.running_mean, norm.running_var, layer.conv.weight]  # type: ignore[list-item]
    assert layer.conv.bias is not None
    return [layer.conv.bias, layer.conv.weight]


def load_darknet_weights(model: YOLOv3, path: str | Path) -> int:
    """Load Darknet ``.weights`` into a ``norm="batch"``, ``width=1`` model; returns the layers read.

    The file is a header (int32 major, minor, revision; ``seen`` as int64 when
    ``major * 10 + minor >= 2``, else int32) and then, per convolutional layer in order, float32
    BN beta, gamma, running mean, running variance and the conv weights, or the conv bias and
    weights for a detection conv. The file must hold exactly all conv layers, or exactly those of
    a prefix of the network (a backbone file such as Darknet's ``darknet53.conv.74``).
    """
    if model.norm != "batch" or model.width != 1:
        raise ValueError(f"Darknet weights need norm = 'batch' and width = 1 (this model has norm = "
                         f"{model.norm!r}, width = {model.width})")
    raw = Path(path).read_bytes()
    if len(raw) < 16:
        raise ValueError(f"Darknet weights {str(path)!r}: {len(raw)} bytes is too short for the header")
    major, minor, _revision = np.frombuffer(raw, dtype="<i4", count=3)
    if major > 1000 or minor > 1000:
        raise ValueError(f"Darknet weights {str(path)!r}: version {major}.{minor} (transposed weights) "
                         "is not supported")
    start = 12 + (8 if major * 10 + minor >= 2 else 4)
    if (len(raw) - start) % 4:
        raise ValueError(f"Darknet weights {str(path)!r}: {len(raw) - start} bytes after the header is not a "
                         "whole number of float32 values")
    values = torch.from_numpy(np.frombuffer(raw, dtype="<f4", offset=start).copy())
    convs = [(i, layer) for i, layer in enumerate(model.layers) if isinstance(layer, ConvLayer)]
    ends, total = {}, 0
    for i, layer in convs:
        total += sum(t.numel() for t in _darknet_tensors(layer))
        ends[total] = i
    if values.numel() not in ends:
        raise ValueError(f"Darknet weights {str(path)!r} do not fit yolo {model.variant} with "
                         f"{model.num_classes} classes: the file holds {values.numel()} float32 values after "
                         f"its {start}-byte header, the model needs {total} (or exactly those of its first "
                         "conv layers)")
    last = ends[values.numel()]
    offset = 0
    with torch.no_grad():
        for i, layer in convs:
            if i > last:
                break
            for tensor in _darknet_tensors(layer):
                tensor.copy_(values[offset: offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()
    return last + 1
