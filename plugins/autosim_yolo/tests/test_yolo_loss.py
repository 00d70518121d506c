"""The YOLOv3 loss: assignment, terms against a loop-by-loop reference, per-image structure,
and the transforms the hypergradient uses (jvp, HVPs) against finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from autosim_core.hypergrad import hvp_forward_over_reverse, hvp_reverse_over_reverse
from torch.func import functional_call, grad, jvp
from torchvision.ops import generalized_box_iou_loss

from autosim_yolo.decode import decode_boxes
from autosim_yolo.loss import assign_targets, giou_loss, ignore_mask, yolo_losses
from autosim_yolo.model import build_yolo
from autosim_yolo.settings import TINY_ANCHORS, YoloSettings

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")

SIZE = 64
N_TINY = 3 * (2 * 2 + 4 * 4)  # predictions of yolov3-tiny at 64 px


def _settings(**kw) -> YoloSettings:
    # YOLOv3's assignment and decoding, which the hand-worked answers and the reference follow.
    base = {"variant": "tiny", "input_size": SIZE, "width": 0.125, "classes": ["a", "b", "c"], "assign": "best",
            "xy_range": 1.0}
    return YoloSettings(**{**base, **kw})


def _targets() -> torch.Tensor:
    """Three images: two objects, one object and padding, no objects."""
    return torch.tensor([
        [[34.0, 18, 46, 30, 2], [8, 48, 12, 52, 0], [0, 0, 0, 0, -1]],
        [[5.0, 5, 40, 45, 1], [0, 0, 0, 0, -1], [0, 0, 0, 0, -1]],
        [[0.0, 0, 0, 0, -1], [0, 0, 0, 0, -1], [0, 0, 0, 0, -1]],
    ])


# ------------------------------------------------------------------------------- reference ---
def _reference_losses(outputs: torch.Tensor, targets: torch.Tensor, s: YoloSettings) -> list[float]:
    """The loss of loss.py's docstring, one prediction and one box at a time in plain Python."""
    factor = s.input_size / 416
    anchors = [(w * factor, h * factor) for w, h in TINY_ANCHORS]
    heads = [(32, (3, 4, 5)), (16, (0, 1, 2))]
    cells = []  # (gx, gy, stride, anchor) per prediction, in the model's order
    for stride, mask in heads:
        side = s.input_size // stride
        cells += [(x, y, stride, anchors[k]) for k in mask for y in range(side) for x in range(side)]

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    def bce(logit: float, target: float) -> float:
        return -(target * math.log(sig(logit)) + (1 - target) * math.log(1 - sig(logit)))

    def iou(a, b) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union

    def giou(a, b) -> float:
        enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
        inter_union = iou(a, b)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
        union -= inter_union * union / (1 + inter_union)
        return 1 - inter_union + (enclosing - union) / enclosing

    losses = []
    for out, rows in zip(outputs.tolist(), targets.tolist(), strict=True):
        decoded = []
        for (tx, ty, tw, th, *_), (gx, gy, stride, (aw, ah)) in zip(out, cells, strict=True):
            cx, cy = (sig(tx) + gx) * stride, (sig(ty) + gy) * stride
            w, h = aw * math.exp(tw), ah * math.exp(th)
            decoded.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        gts = [r for r in rows if r[4] >= 0]
        assigned = {}
        for x0, y0, x1, y1, label in gts:
            w, h = x1 - x0, y1 - y0
            shape = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in anchors]
            k = shape.index(max(shape))
            for i, (gx, gy, stride, anchor) in enumerate(cells):
                if anchor == anchors[k] and gx == int((x0 + x1) / 2 // stride) and gy == int((y0 + y1) / 2 // stride):
                    assigned[i] = ((x0, y0, x1, y1), int(label))
        box = sum(giou(decoded[i], b) for i, (b, _) in assigned.items()) / max(1, len(assigned))
        cls = sum(sum(bce(out[i][5 + c], float(c == label)) for c in range(s.num_classes)) / s.num_classes
                  for i, (_, label) in assigned.items()) / max(1, len(assigned))
        obj = 0.0
        for i, pred in enumerate(decoded):
            if i in assigned:
                obj += bce(out[i][4], 1.0)
            elif not any(iou(pred, g[:4]) > s.ignore_iou for g in gts):
                obj += bce(out[i][4], 0.0)
        losses.append(s.box_gain * box + s.obj_gain * obj / len(decoded) + s.cls_gain * cls)
    return losses


def _outputs(batch: int = 3, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, N_TINY, 8, dtype=torch.float64)


# ---------------------------------------------------------------------------------- tests ---
def test_giou_loss_matches_torchvision():
    torch.manual_seed(0)
    a = torch.rand(200, 4, dtype=torch.float64) * 50
    b = torch.rand(200, 4, dtype=torch.float64) * 50
    a = torch.cat([a[:, :2], a[:, :2] + a[:, 2:] / 2 + 0.1], 1)
    b = torch.cat([b[:, :2], b[:, :2] + b[:, 2:] / 2 + 0.1], 1)
    assert torch.allclose(giou_loss(a, b), generalized_box_iou_loss(a, b), rtol=1e-12, atol=1e-12)
    assert torch.allclose(giou_loss(a.view(10, 20, 4), b.view(10, 20, 4)).view(-1), giou_loss(a, b))


def test_assignment_by_hand():
    s = _settings()
    assigned = assign_targets(_targets(), s)
    # Image 0: a 12 x 12 box centred at (40, 24) fits anchor 3 (81 x 82 * 64/416 = 12.5 x 12.6)
    # best, in the stride-32 head (2x2, anchors 3,4,5), slot 0, cell (1, 0): prediction 1.
    # A 4 x 4 box centred at (10, 50) fits anchor 1 (3.5 x 4.2), stride-16 head (4x4, anchors
    # 0,1,2, after 12 predictions), slot 1, cell (0, 3): 12 + 16 + 12 = 40.
    # Image 1: a 35 x 40 box centred at (22.5, 25) fits anchor 5 (52.9 x 49.1, shape IoU
    # 1400 / 2597 = 0.54) better than anchor 4 (20.8 x 26, 540 / 1400 = 0.39): slot 2 of the
    # first head, cell (0, 0): 8.
    assert assigned["index"].tolist() == [[1, 40, N_TINY], [8, N_TINY, N_TINY], [N_TINY] * 3]
    assert assigned["positive"].nonzero().tolist() == [[0, 1], [0, 40], [1, 8]]
    assert assigned["box"][0, 1].tolist() == [34, 18, 46, 30]
    assert assigned["cls"][0, 1].tolist() == [0, 0, 1] and assigned["cls"][0, 40].tolist() == [1, 0, 0]
    assert assigned["cls"][1, 8].tolist() == [0, 1, 0]
    assert assigned["cls"].sum() == 3


def test_two_boxes_on_one_prediction_last_wins():
    s = _settings()
    targets = torch.tensor([[[34.0, 18, 46, 30, 2], [35, 19, 47, 31, 1], [0, 0, 0, 0, -1]]])
    assigned = assign_targets(targets, s)
    assert assigned["index"].tolist() == [[N_TINY, 1, N_TINY]]
    assert assigned["positive"].sum() == 1
    assert assigned["box"][0, 1].tolist() == [35, 19, 47, 31] and assigned["cls"][0, 1].tolist() == [0, 1, 0]


def test_multi_anchor_and_neighbour_cell_assignment_by_hand():
    # Anchors at 64 px: 0 (1.5 x 2.2), 1 (3.5 x 4.2), 2 (5.7 x 8.9) in the stride-16 head (4 x 4,
    # predictions 12 + slot * 16 + y * 4 + x), 3 (12.5 x 12.6), 4 (20.8 x 26), 5 (52.9 x 49.1) in
    # the stride-32 head (2 x 2, predictions slot * 4 + y * 2 + x).
    # Row 0: a 12 x 12 box centred at (38, 22). Width and height within 4x of anchors 1 (3.4x),
    # 2, 3, 4 (2.2x), not 0 (7.8x) nor 5 (4.4x). Its centre is at cell (2.375, 1.375) of the
    # stride-16 grid: cell (2, 1), nearer the left and top edges, so neighbours (1, 1) and (2, 0);
    # of the stride-32 grid at (1.19, 0.69): cell (1, 0), neighbours (0, 0) and (1, 1).
    # Row 1: a 4 x 4 box centred at (4, 4) fits anchors 0-3; every neighbour is off the grid.
    n = N_TINY
    targets = torch.tensor([[[32.0, 16, 44, 28, 2], [2, 2, 6, 6, 0]]])
    multi = assign_targets(targets, _settings(assign="multi"))
    assert multi["index"].tolist() == [[[n, 34, 50, 1, 5, n], [12, 28, 44, 0, n, n]]]
    cells = assign_targets(targets, _settings(assign="multi-cells", xy_range=2.0))
    # Row 0's neighbour (0, 0) for anchor 3 is prediction 0, row 1's centre cell for anchor 3:
    # the later row wins it.
    assert cells["index"].tolist() == [[[n, 34, 50, 1, 5, n, n, 33, 49, n, 4, n, n, 30, 46, 3, 7, n],
                                        [12, 28, 44, 0, n, n] + [n] * 12]]
    assert cells["positive"].sum() == 11 + 4 and cells["box"][0, 0].tolist() == [2, 2, 6, 6]
    assert cells["box"][0, 33].tolist() == [32, 16, 44, 28] and cells["cls"][0, 33].tolist() == [0, 0, 1]
    assert cells["box"][0, 12].tolist() == [2, 2, 6, 6] and cells["cls"][0, 12].tolist() == [1, 0, 0]
    # With xy_range 2 a centre reaches half a cell past either edge: prediction 33 is cell (1, 1)
    # of stride 16, and its box centre spans x in (8, 40); sigmoid(0) keeps the cell's middle.
    outputs = torch.zeros(1, n, 8, dtype=torch.float64)
    outputs[0, 33, 0] = 50.0
    boxes = decode_boxes(outputs, _settings(xy_range=2.0))[0]
    assert float(boxes[0, 33, [0, 2]].mean()) == pytest.approx(40.0)
    assert float(boxes[0, 34, [0, 2]].mean()) == pytest.approx(40.0)  # cell 2's middle: (2 + 0.5) * 16


@pytest.mark.parametrize("ignore_iou", [0.7, 0.05])
def test_losses_match_the_reference(ignore_iou):
    s = _settings(ignore_iou=ignore_iou)
    outputs = _outputs()
    expected = _reference_losses(outputs, _targets(), s)
    assert yolo_losses(outputs, _targets(), s).tolist() == pytest.approx(expected, rel=1e-10)


def test_ignored_predictions_do_not_count():
    s = _settings()
    targets = torch.tensor([[[34.0, 18, 46, 30, 2]]])  # assigned to prediction 1 (anchor 3, cell (1, 0))
    aw, ah = 135 * SIZE / 416, 169 * SIZE / 416  # anchor 4: prediction 5 is the same cell

    def outputs_with_box_at(cx: float) -> torch.Tensor:
        """Prediction 5 decoding to a 12 x 12 box centred at (cx, 24); all else zero."""
        out = torch.zeros(1, N_TINY, 8, dtype=torch.float64)
        out[0, 5, :4] = torch.tensor([math.log((cx / 32 - 1) / (2 - cx / 32)), math.log(3),
                                      math.log(12 / aw), math.log(12 / ah)])
        return out

    exact, shifted = outputs_with_box_at(40.0), outputs_with_box_at(44.0)  # IoU 1 and 96 / 192 = 0.5
    assert decode_boxes(exact, s)[0][0, 5].tolist() == pytest.approx([34, 18, 46, 30])
    assert ignore_mask(decode_boxes(exact, s)[0], targets, 0.7)[0, 5]
    assert not ignore_mask(decode_boxes(shifted, s)[0], targets, 0.7)[0, 5]
    assert ignore_mask(decode_boxes(shifted, s)[0], targets, 0.4)[0, 5]
    for outputs, threshold, ignored in [(exact, 0.7, True), (shifted, 0.7, False), (shifted, 0.4, True)]:
        settings = _settings(ignore_iou=threshold)
        base = yolo_losses(outputs, targets, settings)
        confident = outputs.clone()
        confident[0, 5, 4] = 5.0
        changed = yolo_losses(confident, targets, settings)
        assert (changed.item() == pytest.approx(base.item(), rel=1e-12)) == ignored
    # A positive overlapping its box is in the ignore mask's overlap test but still learns objectness.
    on_box = torch.zeros(1, N_TINY, 8, dtype=torch.float64)
    on_box[0, 1, :4] = torch.tensor([-math.log(3), math.log(3), math.log(12 / (81 * SIZE / 416)),
                                     math.log(12 / (82 * SIZE / 416))])
    assert ignore_mask(decode_boxes(on_box, s)[0], targets, 0.7)[0, 1]
    confident = on_box.clone()
    confident[0, 1, 4] = 5.0
    assert yolo_losses(confident, targets, s) < yolo_losses(on_box, targets, s)


def test_image_without_objects_has_only_objectness():
    outputs = _outputs(seed=3)
    empty = torch.full((3, 1, 5), -1.0)
    empty[..., :4] = 0
    a = yolo_losses(outputs, empty, _settings())
    b = yolo_losses(outputs, empty, _settings(box_gain=10.0, cls_gain=7.0))
    assert torch.equal(a, b)
    expected = _settings().obj_gain * torch.nn.functional.softplus(outputs[..., 4]).mean(1)  # BCE against 0
    assert torch.allclose(a, expected, rtol=1e-12)


def test_bad_arguments():
    s = _settings()
    with pytest.raises(ValueError, match="shape"):
        yolo_losses(torch.zeros(3, N_TINY + 1, 8), _targets(), s)
    with pytest.raises(ValueError, match="class ids"):
        yolo_losses(torch.zeros(1, N_TINY, 8), torch.tensor([[[1.0, 1, 5, 5, 3]]]), s)


# ---------------------------------------------------------------- per image, batch of one ---
# The YOLOv5-like recipe's settings, for the transforms the hypergradient uses.
RECIPE = {"assign": "multi-cells", "xy_range": 2.0, "obj_pos_weight": 3.0}


def _model_and_batch(dtype=torch.float64, **settings):
    s = _settings(**settings)
    torch.manual_seed(0)
    model = build_yolo(s).to(dtype)
    images = torch.rand(3, 3, SIZE, SIZE, dtype=dtype)
    return s, model, images, _targets()


def test_per_image_losses_and_gradients_are_those_of_a_batch_of_one():
    s, model, images, targets = _model_and_batch()
    per_image = yolo_losses(model(images), targets, s)
    assert per_image.shape == (3,)
    params = list(model.parameters())
    for k in range(3):
        alone = yolo_losses(model(images[k:k + 1]), targets[k:k + 1], s)
        assert alone.shape == (1,)
        assert alone[0].item() == pytest.approx(per_image[k].item(), rel=1e-12)
        g_batch = torch.autograd.grad(per_image[k], params, retain_graph=True)
        g_alone = torch.autograd.grad(alone[0], params)
        for a, b in zip(g_batch, g_alone, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)
    # The mean over images is the batch loss, also when targets are padded differently.
    mean = per_image.mean()
    separate = [yolo_losses(model(images[k:k + 1]), targets[k:k + 1, :1 + (k == 0)], s) for k in range(3)]
    assert mean.item() == pytest.approx(torch.cat(separate).mean().item(), rel=1e-12)


def _functional(s, model, images, targets):
    params = {k: p.detach() for k, p in model.named_parameters()}

    def per_image(p):
        return yolo_losses(functional_call(model, p, (images,)), targets, s)

    return params, per_image


def _unit(params: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
    norm = math.sqrt(sum(float((t * t).sum()) for t in v.values()))
    return {k: t / norm for k, t in v.items()}


@pytest.mark.parametrize("settings", [{}, RECIPE], ids=["default", "yolov5-like"])
def test_hvp_matches_finite_difference_of_gradients(settings):
    s, model, images, targets = _model_and_batch(**settings)
    params, per_image = _functional(s, model, images, targets)

    def mean_loss(p):
        return per_image(p).mean()

    v = _unit(params, 1)
    # A step of 1e-5 along a unit vector: ReLU-like kinks (leaky ReLU, max pools, the ignore
    # set) crossed inside a larger step would add O(jump / h) errors to the difference.
    h = 1e-5
    g = grad(mean_loss)
    plus = g({k: p + h * v[k] for k, p in params.items()})
    minus = g({k: p - h * v[k] for k, p in params.items()})
    fd = {k: (plus[k] - minus[k]) / (2 * h) for k in params}
    scale = math.sqrt(sum(float((t * t).sum()) for t in fd.values()))
    assert scale > 1e-3
    for hvp in (hvp_reverse_over_reverse, hvp_forward_over_reverse):
        hv = hvp(mean_loss, params, v)
        err = math.sqrt(sum(float(((hv[k] - fd[k]) ** 2).sum()) for k in params))
        assert err < 1e-6 * scale, hvp.__name__


@pytest.mark.parametrize("settings", [{}, RECIPE], ids=["default", "yolov5-like"])
def test_jvp_of_per_image_losses(settings):
    s, model, images, targets = _model_and_batch(**settings)
    params, per_image = _functional(s, model, images, targets)
    v = _unit(params, 2)
    _, tangent = jvp(per_image, (params,), (v,))
    h = 1e-6
    with torch.no_grad():
        fd = (per_image({k: p + h * v[k] for k, p in params.items()})
              - per_image({k: p - h * v[k] for k, p in params.items()})) / (2 * h)
    losses = per_image(dict(model.named_parameters()))
    names = [n for n, _ in model.named_parameters()]
    dots = []
    for k in range(3):
        grads = torch.autograd.grad(losses[k], list(model.parameters()), retain_graph=True)
        dots.append(sum((gr * v[n]).sum() for gr, n in zip(grads, names, strict=True)))
    assert torch.allclose(tangent, torch.stack(dots), rtol=1e-10, atol=1e-14)
    assert torch.allclose(tangent, fd, rtol=1e-6, atol=1e-9)


def test_spp_transforms():
    s = _settings(variant="spp")
    torch.manual_seed(0)
    model = build_yolo(s).double()
    images = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    params, per_image = _functional(s, model, images, _targets()[:2])
    v = _unit(params, 3)
    _, tangent = jvp(per_image, (params,), (v,))
    losses = per_image(dict(model.named_parameters()))
    names = [n for n, _ in model.named_parameters()]
    for k in range(2):
        grads = torch.autograd.grad(losses[k], list(model.parameters()), retain_graph=True)
        dot = sum((gr * v[n]).sum() for gr, n in zip(grads, names, strict=True))
        assert tangent[k].item() == pytest.approx(dot.item(), rel=1e-9)
    hv = hvp_reverse_over_reverse(lambda p: per_image(p).mean(), params, v)
    assert all(torch.isfinite(t).all() for t in hv.values())


# -------------------------------------------------------------------------------- training ---
def test_loss_decreases_when_training():
    s = _settings(width=0.25, classes=["square"])
    torch.manual_seed(0)
    model = build_yolo(s)
    images = torch.zeros(2, 3, SIZE, SIZE)
    images[0, :, 10:30, 30:50] = 1
    images[1, :, 34:58, 6:26] = 1
    targets = torch.tensor([[[30.0, 10, 50, 30, 0]], [[6.0, 34, 26, 58, 0]]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = yolo_losses(model(images), targets, s).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5
