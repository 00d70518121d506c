"""YOLOv3-tiny / -spp: layers against Darknet's cfgs, output layout, freezing, norms, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call, jvp

from autosim_yolo.loss import yolo_losses
from autosim_yolo.model import (
    ConvLayer,
    MaxPoolLayer,
    RouteLayer,
    ShortcutLayer,
    UpsampleLayer,
    YoloLayer,
    YOLOv3,
    build_yolo,
    load_darknet_weights,
    prediction_grid,
)
from autosim_yolo.settings import SPP_ANCHORS, TINY_ANCHORS, YoloSettings

# torch's first forward-mode call loads decompositions through the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")

# The section types of Darknet's cfgs after [net], in order (C convolutional, M maxpool,
# R route, S shortcut, U upsample, Y yolo), read off pjreddie/darknet's cfg/yolov3-tiny.cfg
# and cfg/yolov3-spp.cfg.
TINY_CFG_TYPES = "CMCMCMCMCMCMCCCCYRCURCCY"
SPP_CFG_TYPES = ("CCCCSCCCSCCSCCCSCCSCCSCCSCCSCCSCCSCCSCCCSCCSCCSCCSCCSCCSCCSCCSCCCSCCSCCSCCSCCCMRMRMRCCCCCYRC"
                 "URCCCCCCCYRCURCCCCCCCY")
# Their route layers as absolute indices (the cfgs' relative ones resolved by hand).
TINY_ROUTES = {17: (13,), 20: (19, 8)}
SPP_ROUTES = {79: (77,), 81: (77,), 83: (82, 80, 78, 77), 90: (86,), 93: (92, 61), 102: (98,), 105: (104, 36)}
# Sizes of Darknet's released files at 80 classes: yolov3-tiny.weights is 35,434,956 bytes;
# yolov3-spp.weights is yolov3.weights (248,007,048 bytes) plus the one extra 1x1 conv of the
# SPP head (2048 -> 512 weights and 4 x 512 BN values, as float32).
TINY_WEIGHTS_BYTES = 35_434_956
SPP_WEIGHTS_BYTES = 248_007_048 + 4 * (2048 * 512 + 4 * 512)

KINDS = {ConvLayer: "C", MaxPoolLayer: "M", RouteLayer: "R", ShortcutLayer: "S", UpsampleLayer: "U", YoloLayer: "Y"}


def _types(model: YOLOv3) -> str:
    return "".join(KINDS[type(layer)] for layer in model.layers)


def _settings(**kw) -> YoloSettings:
    base = {"variant": "tiny", "input_size": 64, "width": 0.125, "classes": ["a", "b"]}
    return YoloSettings(**{**base, **kw})


@pytest.mark.parametrize(("variant", "types", "routes", "count"),
                         [("tiny", TINY_CFG_TYPES, TINY_ROUTES, 24), ("spp", SPP_CFG_TYPES, SPP_ROUTES, 114)])
def test_layers_follow_the_darknet_cfg(variant, types, routes, count):
    model = YOLOv3(variant, 3, 0.125)
    assert len(model.layers) == count == len(types)
    assert _types(model) == types
    assert {i: layer.sources for i, layer in enumerate(model.layers) if isinstance(layer, RouteLayer)} == routes
    for i, layer in enumerate(model.layers):
        if isinstance(layer, ShortcutLayer):
            assert layer.source == i - 3
    # Detection convs: 1x1 with bias and no norm, A * (5 + C) = 3 * 8 outputs, right before a yolo layer.
    for i, layer in enumerate(model.layers):
        if isinstance(layer, YoloLayer):
            detect = model.layers[i - 1]
            assert detect.norm is None and detect.conv.bias is not None
            assert detect.conv.out_channels == 24 and detect.conv.kernel_size == (1, 1)


@pytest.mark.parametrize(("variant", "size"), [("tiny", TINY_WEIGHTS_BYTES), ("spp", SPP_WEIGHTS_BYTES)])
def test_full_width_matches_darknets_released_weights(variant, size):
    with torch.device("meta"):
        model = YOLOv3(variant, 80, 1.0, "batch")
    floats = sum(p.numel() for p in model.parameters())
    floats += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert 20 + 4 * floats == size


def test_yolo_heads_and_anchor_masks():
    tiny, spp = YOLOv3("tiny", 1, 0.125), YOLOv3("spp", 1, 0.125)
    assert [(h.stride, h.mask) for h in tiny.layers if isinstance(h, YoloLayer)] == [(32, (3, 4, 5)), (16, (0, 1, 2))]
    assert [(h.stride, h.mask) for h in spp.layers if isinstance(h, YoloLayer)] == \
        [(32, (6, 7, 8)), (16, (3, 4, 5)), (8, (0, 1, 2))]


@pytest.mark.parametrize(("variant", "size", "count"),
                         [("tiny", 64, 3 * (2 * 2 + 4 * 4)), ("tiny", 96, 3 * (3 * 3 + 6 * 6)),
                          ("spp", 64, 3 * (2 * 2 + 4 * 4 + 8 * 8)), ("spp", 96, 3 * (3 * 3 + 6 * 6 + 12 * 12))])
def test_output_shape(variant, size, count):
    settings = _settings(variant=variant, input_size=size)
    model = build_yolo(settings)
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, count, 5 + 2)
    grid = prediction_grid(settings)
    assert all(v.shape == (count,) for v in grid.values())


def test_channels_scale_with_width():
    model = YOLOv3("tiny", 2, 0.5)
    convs = [layer.conv.out_channels for layer in model.layers if isinstance(layer, ConvLayer)]
    assert convs == [8, 16, 32, 64, 128, 256, 512, 128, 256, 21, 64, 128, 21]
    narrow = YOLOv3("tiny", 2, 0.125)
    assert [c.conv.out_channels for c in narrow.layers if isinstance(c, ConvLayer)][:4] == [8, 8, 8, 16]
    gn = model.layers[0].norm
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_channels % gn.num_groups == 0


def test_yolo_layer_orders_predictions_anchor_y_x():
    head = YoloLayer((0, 1), stride=16, num_classes=1)
    a_count, ch, h, w = 2, 6, 3, 4
    # Each value encodes (anchor, channel, y, x) of the conv output.
    codes = torch.tensor([[[[1000 * a + 100 * c + 10 * y + x for x in range(w)] for y in range(h)]
                           for c in range(ch)] for a in range(a_count)], dtype=torch.float32)
    out = head(codes.reshape(1, a_count * ch, h, w))
    assert out.shape == (1, a_count * h * w, ch)
    for a in range(a_count):
        for y in range(h):
            for x in range(w):
                for c in range(ch):
                    assert out[0, a * h * w + y * w + x, c] == 1000 * a + 100 * c + 10 * y + x


def test_prediction_grid_cells_and_anchors_scale_with_input_size():
    small, large = prediction_grid(_settings(input_size=64)), prediction_grid(_settings(input_size=128))
    # At 64 px the stride-32 head is 2x2 (predictions 0..11), then the 4x4 stride-16 head.
    assert small["stride"][:12].tolist() == [32] * 12 and small["stride"][12:].tolist() == [16] * 48
    # Prediction 4 + 3 = 7: anchor slot 1 (anchor 4), cell x = 1, y = 1.
    assert (small["gx"][7], small["gy"][7]) == (1, 1)
    assert small["anchor_w"][7] == pytest.approx(TINY_ANCHORS[4][0] * 64 / 416)
    # Prediction 12 + 2 * 16 + 2 * 4 + 3: head 2, anchor slot 2 (anchor 2), x = 3, y = 2.
    i = 12 + 2 * 16 + 2 * 4 + 3
    assert (small["gx"][i], small["gy"][i]) == (3, 2)
    assert (small["anchor_w"][i], small["anchor_h"][i]) == pytest.approx((37 * 64 / 416, 58 * 64 / 416))
    first = {k: v[0] for k, v in large.items()}
    assert (first["anchor_w"], first["anchor_h"]) == pytest.approx((81 * 128 / 416, 82 * 128 / 416))
    assert large["anchor_w"][0] == pytest.approx(2 * small["anchor_w"][0])
    spp = prediction_grid(_settings(variant="spp", input_size=64))
    assert spp["anchor_h"][0] == pytest.approx(SPP_ANCHORS[6][1] * 64 / 416)
    assert spp["anchor_h"][-1] == pytest.approx(SPP_ANCHORS[2][1] * 64 / 416)
    custom = prediction_grid(_settings(anchors=[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (416, 208)]))
    assert (custom["anchor_w"][8], custom["anchor_h"][8]) == pytest.approx((64.0, 32.0))


def test_darknet_maxpool_padding():
    x = torch.arange(16.0).reshape(1, 1, 4, 4) * torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = MaxPoolLayer(2, 1)(x)
    assert out.shape == x.shape
    for i in range(4):
        for j in range(4):
            assert out[0, 0, i, j] == x[0, 0, i:i + 2, j:j + 2].max()
    out = MaxPoolLayer(5, 1)(x)
    for i in range(4):
        for j in range(4):
            assert out[0, 0, i, j] == x[0, 0, max(0, i - 2):i + 3, max(0, j - 2):j + 3].max()
    assert MaxPoolLayer(2, 2)(x).shape == (1, 1, 2, 2)
    # Darknet: out = (w + size - 1 - size) // stride + 1, so an odd side keeps a last half window.
    odd = torch.randn(1, 1, 5, 5)
    out = MaxPoolLayer(2, 2)(odd)
    assert out.shape == (1, 1, 3, 3) and out[0, 0, 2, 2] == odd[0, 0, 4, 4]
    assert out[0, 0, 1, 2] == odd[0, 0, 2:4, 4].max()


def test_bad_input_shapes():
    model = YOLOv3("tiny", 1, 0.125)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 48, 48))
    with pytest.raises(ValueError, match="B, 3, S, S"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="unknown yolo variant"):
        YOLOv3("huge")


# ------------------------------------------------------------------------------------ freeze ---
def _synthetic_batch(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(2, 3, size, size)
    images[0, :, 8:28, 30:50] = 1
    images[1, :, 36:60, 4:20] = 1
    targets = torch.tensor([[[30.0, 8, 50, 28, 0]], [[4.0, 36, 20, 60, 1]]])
    return images, targets


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_freeze_keeps_frozen_layers_fixed(norm):
    settings = _settings(freeze=9, norm=norm)
    torch.manual_seed(0)
    model = build_yolo(settings)
    for name, p in model.named_parameters():
        assert p.requires_grad == (int(name.split(".")[1]) >= 9), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    images, targets = _synthetic_batch()
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        yolo_losses(model(images), targets, settings).mean().backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in after.items():
        layer = int(key.split(".")[1])
        if key.endswith("num_batches_tracked"):
            continue
        if layer < 9:
            assert torch.equal(value, before[key]), key
        elif key.endswith(("weight", "bias")) or norm == "batch":
            assert not torch.equal(value, before[key]), key


def test_freeze_range():
    with pytest.raises(ValueError, match="freeze"):
        build_yolo(_settings(freeze=23))
    with pytest.raises(ValueError, match="freeze"):
        build_yolo(_settings(variant="spp", freeze=113))
    model = build_yolo(_settings(freeze=22))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["layers.22.conv.weight", "layers.22.conv.bias"]


# ------------------------------------------------------------------------------------- norms ---
def test_batchnorm_trains_in_train_mode_and_transforms_in_eval_mode():
    settings = _settings(norm="batch")
    torch.manual_seed(0)
    model = build_yolo(settings)
    images, targets = _synthetic_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss = yolo_losses(model(images), targets, settings).mean()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert model.layers[0].norm.num_batches_tracked == 2

    model.eval().double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    direction = {k: torch.randn_like(p) for k, p in params.items()}

    def per_image(p):
        return yolo_losses(functional_call(model, p, (images.double(),)), targets, settings)

    _, tangent = jvp(per_image, (params,), (direction,))
    reverse = []
    for k in range(2):
        grads = torch.autograd.grad(per_image(dict(model.named_parameters()))[k], list(model.parameters()))
        reverse.append(sum((g * direction[n]).sum() for g, (n, _) in zip(grads, model.named_parameters(), strict=True)))
    assert torch.allclose(tangent, torch.stack(reverse), rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------- weights ---
def test_state_dict_round_trip(tmp_path: Path):
    settings = _settings()
    torch.manual_seed(1)
    source = build_yolo(settings)
    images = torch.rand(1, 3, 64, 64)
    for i, wrap in enumerate([lambda sd: sd, lambda sd: {"model": sd, "epoch": 3}, lambda sd: {"state_dict": sd}]):
        path = tmp_path / f"w{i}.pt"
        torch.save(wrap(source.state_dict()), path)
        torch.manual_seed(2)
        loaded = build_yolo(settings.model_copy(update={"weights": str(path)}))
        assert torch.equal(loaded(images), source(images))


def test_bad_state_dicts_are_reported(tmp_path: Path):
    settings = _settings()
    other = tmp_path / "spp.pt"
    torch.save(build_yolo(_settings(variant="spp")).state_dict(), other)
    with pytest.raises(ValueError, match="unexpected keys"):
        build_yolo(settings.model_copy(update={"weights": str(other)}))
    wider = tmp_path / "wider.pt"
    torch.save(build_yolo(_settings(width=0.5)).state_dict(), wider)
    with pytest.raises(ValueError, match="wrong shapes"):
        build_yolo(settings.model_copy(update={"weights": str(wider)}))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        build_yolo(settings.model_copy(update={"weights": str(garbage)}))
    pickled = tmp_path / "object.pt"
    torch.save({"model": Path("x")}, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        build_yolo(settings.model_copy(update={"weights": str(pickled)}))
    with pytest.raises(FileNotFoundError):
        build_yolo(settings.model_copy(update={"weights": str(tmp_path / "missing.pt")}))


def _write_darknet(model: YOLOv3, path: Path, *, minor: int = 2, upto: int | None = None) -> None:
    """Darknet's layout, written independently of the loader: header, then per conv layer
    BN beta, gamma, mean, variance and weights, or bias and weights."""
    chunks = [np.array([0, minor, 0], dtype="<i4").tobytes(),
              np.array([12345], dtype="<i8" if minor >= 2 else "<i4").tobytes()]
    for i, layer in enumerate(model.layers):
        if upto is not None and i >= upto:
            break
        if not isinstance(layer, ConvLayer):
            continue
        conv, bn = layer.conv, layer.norm
        parts = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [conv.bias]
        for t in [*parts, conv.weight]:
            chunks.append(t.detach().numpy().astype("<f4").tobytes())
    path.write_bytes(b"".join(chunks))


def _randomised_darknet_model(seed: int) -> YOLOv3:
    torch.manual_seed(seed)
    model = YOLOv3("tiny", 2, 1.0, "batch")
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, ConvLayer) and layer.norm is not None:
                layer.norm.weight.uniform_(0.5, 1.5)
                layer.norm.bias.normal_()
                layer.norm.running_mean.normal_()
                layer.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("minor", [2, 1])
def test_darknet_weights_round_trip(tmp_path: Path, minor: int):
    source = _randomised_darknet_model(0)
    path = tmp_path / "tiny.weights"
    _write_darknet(source, path, minor=minor)
    settings = _settings(width=1.0, norm="batch", weights=str(path))
    loaded = build_yolo(settings).eval()
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(images), source(images))


def test_darknet_backbone_prefix(tmp_path: Path):
    source = _randomised_darknet_model(0)
    path = tmp_path / "tiny.conv.15"
    _write_darknet(source, path, upto=15)
    target = _randomised_darknet_model(1)
    untouched = {k: v.clone() for k, v in target.state_dict().items()}
    assert load_darknet_weights(target, path) == 15
    loaded = source.state_dict()
    for key, value in target.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, loaded[key] if int(key.split(".")[1]) < 15 else untouched[key]), key


def test_bad_darknet_weights(tmp_path: Path):
    source = _randomised_darknet_model(0)
    path = tmp_path / "tiny.weights"
    _write_darknet(source, path)
    short = tmp_path / "short.weights"
    short.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="do not fit"):
        build_yolo(_settings(width=1.0, norm="batch", weights=str(short)))
    with pytest.raises(ValueError, match="do not fit"):
        build_yolo(_settings(width=1.0, norm="batch", classes=["a"], weights=str(path)))
    with pytest.raises(ValueError, match="norm = 'batch' and width = 1"):
        build_yolo(_settings(width=1.0, weights=str(path)))
    with pytest.raises(ValueError, match="norm = 'batch' and width = 1"):
        build_yolo(_settings(width=0.5, norm="batch", weights=str(path)))
    tiny = tmp_path / "header.weights"
    tiny.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="too short"):
        build_yolo(_settings(width=1.0, norm="batch", weights=str(tiny)))
