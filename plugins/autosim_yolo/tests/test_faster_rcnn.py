"""The faster-rcnn model, loss and detections, checked against torchvision and against numerics."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from autosim_core.hypergrad import directional_derivatives_jvp, hvp_reverse_over_reverse
from torch.func import functional_call, jvp
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from autosim_yolo.faster_rcnn import (
    ANCHOR_SIZES,
    ASPECT_RATIOS,
    REFERENCE_SIZE,
    FasterRCNNDetector,
    _expected_sampling,
    anchor_boxes,
    build_faster_rcnn,
    faster_rcnn_detections,
    faster_rcnn_loss_terms,
    faster_rcnn_losses,
    feature_sizes,
    multiscale_roi_align,
    output_width,
    roi_align,
    split_outputs,
)
from autosim_yolo.settings import FasterRCNNSettings

# torch's first forward-mode call compiles its decompositions with the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")

SIZE = 64
CLASSES = ["a", "b"]


def tiny_settings(**changes: object) -> FasterRCNNSettings:
    return FasterRCNNSettings(input_size=SIZE, proposals=8, classes=CLASSES, **changes)


def spread_rpn(model: FasterRCNNDetector) -> None:
    # torchvision initialises the RPN near zero, so every proposal would be an anchor; larger
    # weights make the proposals depend on the network, as after training.
    head = model.rpn["head"]
    torch.nn.init.normal_(head.cls_logits.weight, std=0.05)
    torch.nn.init.normal_(head.bbox_pred.weight, std=0.02)


def calibrate(model: FasterRCNNDetector) -> None:
    # A fresh network's BatchNorm statistics (mean 0, variance 1) make eval-mode activations
    # vanish towards the heads; statistics of a few images give it a trained network's scale.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(images(4, seed=9).to(next(model.parameters()).dtype))
    model.eval()


@pytest.fixture(scope="module")
def model() -> FasterRCNNDetector:
    torch.set_num_threads(1)  # conftest's fixture runs per test, after module fixtures
    torch.manual_seed(0)
    m = build_faster_rcnn(tiny_settings())
    spread_rpn(m)
    m = m.double()
    calibrate(m)
    return m


def images(count: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, SIZE, SIZE, generator=g, dtype=torch.float64)


def targets_of(rows: list[list[list[float]]]) -> torch.Tensor:
    m = max(1, *(len(r) for r in rows))
    out = torch.zeros(len(rows), m, 5)
    out[:, :, 4] = -1
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r)
    return out


TARGETS = targets_of([[[6, 8, 30, 34, 0], [28, 30, 60, 58, 1], [40, 4, 52, 20, 0]], [], [[10, 12, 50, 44, 1]]])


def functional(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, settings: FasterRCNNSettings):
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def per_sample(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return faster_rcnn_losses(functional_call(model, {**fixed, **th}, (x,)), t, settings)

    return per_sample, theta


# ------------------------------------------------------------------------------ RoIAlign ---
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_matches_torchvision(aligned: bool, sampling_ratio: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 9, 11, generator=g, dtype=dtype)
    corner = torch.rand(2, 12, 2, generator=g, dtype=dtype) * 50 - 8  # partly outside the 36 x 44 image
    size = torch.rand(2, 12, 2, generator=g, dtype=dtype) * 30
    boxes = torch.cat([corner, corner + size], dim=-1)
    boxes[0, 0] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # degenerate, like padding proposals
    boxes[1, 1] = torch.tensor([-20.0, -20.0, -10.0, -12.0])  # wholly outside
    ours = roi_align(features, boxes, (7, 5), 0.25, sampling_ratio, aligned)
    theirs = tv_roi_align(features, list(boxes), (7, 5), 0.25, sampling_ratio, aligned)
    assert ours.shape == (2, 12, 3, 7, 5)
    torch.testing.assert_close(ours.flatten(0, 1), theirs, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)


def test_multiscale_roi_align_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(1)
    feats = {"0": torch.randn(2, 4, 64, 64, generator=g), "1": torch.randn(2, 4, 32, 32, generator=g),
             "2": torch.randn(2, 4, 16, 16, generator=g)}
    corner = torch.rand(2, 10, 2, generator=g) * 120
    # Sides from 10 to 250 px: LevelMapper sends them to all three levels.
    sides = torch.tensor([10.0, 40, 90, 150, 250, 20, 60, 120, 200, 30])[:, None] * (0.7 + 0.6 * torch.rand(
        2, 10, 2, generator=g))
    boxes = torch.cat([corner, corner + sides], dim=-1)
    pooler = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)
    theirs = pooler(feats, list(boxes), [(256, 256), (256, 256)])
    ours = multiscale_roi_align(list(feats.values()), boxes, [1 / 4, 1 / 8, 1 / 16], 7, 2)
    torch.testing.assert_close(ours.flatten(0, 1), theirs, atol=1e-5, rtol=0)


def test_roi_align_is_twice_differentiable_and_forward_differentiable() -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[[0.5, 1.0, 14.0, 9.0], [-3.0, 2.0, 20.0, 19.0], [6.0, 6.0, 7.0, 6.5]]],
                         dtype=torch.float64)

    def pool(f: torch.Tensor) -> torch.Tensor:
        return roi_align(f, boxes, 3, 0.5) ** 2  # squared, so the second derivative is not zero

    assert torch.autograd.gradgradcheck(pool, (features,))
    tangent = torch.randn(features.shape, generator=g, dtype=torch.float64)
    _, jv = jvp(lambda f: roi_align(f, boxes, 3, 0.5), (features.detach(),), (tangent,))
    torch.testing.assert_close(jv, roi_align(tangent, boxes, 3, 0.5))
    assert jv.abs().max() > 0.1


# --------------------------------------------------------------------------------- model ---
def test_state_dict_and_anchors_are_torchvisions(model: FasterRCNNDetector) -> None:
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    for size in (SIZE, 160):
        factor = size / REFERENCE_SIZE
        generator = AnchorGenerator((tuple(s * factor for s in ANCHOR_SIZES),) * 3, (ASPECT_RATIOS,) * 3)
        maps = [torch.zeros(1, 1, n, n) for n in feature_sizes(size)]
        theirs = generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0]
        torch.testing.assert_close(anchor_boxes(size).float(), theirs)
    x = images(2).float()
    sides = [f.shape[-1] for f in reference.backbone(x).values()]
    assert tuple(sides) == feature_sizes(SIZE)


def test_proposals_match_torchvision_rpn(model: FasterRCNNDetector) -> None:
    s = tiny_settings()
    x = images(3)
    with torch.no_grad():
        parts = split_outputs(model(x), s)
        features = model.backbone(model.normalize(x))
        factor = SIZE / REFERENCE_SIZE
        rpn = RegionProposalNetwork(
            AnchorGenerator((tuple(v * factor for v in ANCHOR_SIZES),) * 3, (ASPECT_RATIOS,) * 3),
            model.rpn["head"], 0.7, 0.3, 256, 0.5, {"training": 1000, "testing": 1000},
            {"training": s.proposals, "testing": s.proposals}, 0.7, score_thresh=0.0).eval()
        boxes, _ = rpn(ImageList(x, [(SIZE, SIZE)] * 3), features)
    for i, b in enumerate(boxes):
        n = b.shape[0]
        assert 0 < n <= s.proposals
        torch.testing.assert_close(parts.proposals[i, :n], b)
        assert parts.valid[i, :n].eq(1).all() and parts.valid[i, n:].eq(0).all()
        assert parts.proposals[i, n:].eq(0).all()


def test_output_shape_is_fixed(model: FasterRCNNDetector) -> None:
    s = tiny_settings()
    with torch.no_grad():
        out = model(images(3))
    assert out.shape == (3, output_width(s))
    losses = faster_rcnn_losses(out, TARGETS, s)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    # A batch with more objects per image only pads the targets, never the outputs.
    wider = torch.cat([TARGETS, torch.tensor([[[0.0, 0, 0, 0, -1]]]).expand(3, 4, 5)], dim=1)
    torch.testing.assert_close(faster_rcnn_losses(out, wider, s), losses)
    with pytest.raises(ValueError, match="outputs must have shape"):
        faster_rcnn_losses(out[:, :-1], TARGETS, s)
    with pytest.raises(ValueError, match="expects images"):
        model(torch.zeros(1, 3, SIZE + 32, SIZE + 32, dtype=torch.float64))


def test_losses_match_torchvision_per_image(model: FasterRCNNDetector) -> None:
    # At 64 px there are 135 anchors and 8 proposals: torchvision's sampler draws them all, so
    # its loss is deterministic and must equal the expected loss exactly.
    s = tiny_settings()
    x = images(3)
    with torch.no_grad():
        out = model(x)
    parts = split_outputs(out, s)
    terms = faster_rcnn_loss_terms(out, TARGETS, s)
    factor = SIZE / REFERENCE_SIZE
    rpn = RegionProposalNetwork(
        AnchorGenerator((tuple(v * factor for v in ANCHOR_SIZES),) * 3, (ASPECT_RATIOS,) * 3),
        model.rpn["head"], 0.7, 0.3, 256, 0.5, {"training": 1, "testing": 1}, {"training": 1, "testing": 1}, 0.7)
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100)
    anchors = anchor_boxes(SIZE).double()
    for i in range(3):
        rows = TARGETS[i][TARGETS[i, :, 4] >= 0].double()
        target = {"boxes": rows[:, :4], "labels": rows[:, 4].long() + 1}
        labels, matched = rpn.assign_targets_to_anchors([anchors], [target])
        regression = rpn.box_coder.encode(matched, [anchors])
        objectness, rpn_box = rpn.compute_loss(parts.rpn_logits[i], parts.rpn_deltas[i], labels, regression)
        assert (labels[0] == 1).sum() <= 121  # so that all 135 anchors are drawn
        # torchvision's labels are float32, which makes its BCE float32.
        torch.testing.assert_close(terms["loss_objectness"][i], objectness.double(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(terms["loss_rpn_box_reg"][i], rpn_box.double())

        valid = parts.valid[i] > 0.5
        proposals = parts.proposals[i][valid]
        matched_idx, roi_labels = heads.assign_targets_to_proposals([proposals], [target["boxes"]],
                                                                    [target["labels"]])
        gt = target["boxes"][matched_idx[0]] if rows.numel() else torch.zeros_like(proposals)
        roi_regression = heads.box_coder.encode([gt], [proposals])
        classifier, box = fastrcnn_loss(parts.class_logits[i][valid], parts.box_regression[i][valid].flatten(1),
                                        roi_labels, roi_regression)
        torch.testing.assert_close(terms["loss_classifier"][i], classifier)
        torch.testing.assert_close(terms["loss_box_reg"][i], box)
    assert terms["loss_rpn_box_reg"][0] > 0 and terms["loss_rpn_box_reg"][1] == 0


def test_expected_sampling_matches_torchvision_sampler() -> None:
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

    labels = torch.full((600,), -1)
    labels[:200] = 1
    labels[200:500] = 0
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    torch.manual_seed(0)
    draws = 3000
    counts = torch.zeros(600)
    for _ in range(draws):
        pos, neg = sampler([labels])
        counts += (pos[0] | neg[0]).float()
    weights, norm = _expected_sampling(labels == 1, labels == 0, 256, 0.5)
    assert norm == 256
    torch.testing.assert_close(counts / draws, weights.float(), atol=0.04, rtol=0)
    assert weights[500:].eq(0).all()


def test_per_image_losses_equal_batches_of_one(model: FasterRCNNDetector) -> None:
    s = tiny_settings()
    x = images(3)
    with torch.no_grad():
        batch = faster_rcnn_losses(model(x), TARGETS, s)
        single = torch.cat([faster_rcnn_losses(model(x[i:i + 1]), TARGETS[i:i + 1], s) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batch.mean(), single.mean(), rtol=1e-9, atol=1e-9)
    assert len(set(batch.tolist())) == 3


def test_hvp_matches_central_difference_of_gradients(model: FasterRCNNDetector,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = tiny_settings()
    x = images(2)
    per_sample, theta = functional(model, x, TARGETS[[0, 2]], s)
    # The proposals are constants of the graph (as in torchvision), so H is the Hessian at fixed
    # proposals; the difference quotient must hold them fixed too, or it sees them move.
    with torch.no_grad():
        frozen = split_outputs(model(x), s)
    proposals = (frozen.proposals.clone(), frozen.valid.clone())
    monkeypatch.setattr(model, "_proposals", lambda logits, deltas: proposals)

    def mean_loss(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return per_sample(th).mean()

    g = torch.Generator().manual_seed(3)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in theta.items()}
    norm = torch.cat([t.flatten() for t in v.values()]).norm()
    v = {k: t / norm for k, t in v.items()}
    hv = hvp_reverse_over_reverse(mean_loss, theta, v)

    def gradient(th: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        leaves = {k: p.clone().requires_grad_(True) for k, p in th.items()}
        grads = torch.autograd.grad(mean_loss(leaves), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True))

    # Small enough that hardly any ReLU or hard-swish kink lies between theta -/+ h v.
    h = 1e-6
    plus = gradient({k: p + h * v[k] for k, p in theta.items()})
    minus = gradient({k: p - h * v[k] for k, p in theta.items()})
    fd = {k: (plus[k] - minus[k]) / (2 * h) for k in theta}

    def flat(d: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        return torch.cat([d[k].flatten() for k in theta if k.startswith(prefix)])

    assert flat(hv).norm() > 0.1
    assert (flat(hv) - flat(fd)).norm() < 1e-6 * flat(hv).norm()
    # The box head sits behind the RoI pooling: its part of Hv must be right as well.
    head = "roi_heads.box_head."
    assert flat(hv, head).norm() > 0 and (flat(hv, head) - flat(fd, head)).norm() < 1e-6 * flat(hv, head).norm()


def test_jvp_equals_per_image_gradients(model: FasterRCNNDetector) -> None:
    s = tiny_settings()
    per_sample, theta = functional(model, images(3), TARGETS, s)
    g = torch.Generator().manual_seed(4)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in theta.items()}
    c = directional_derivatives_jvp(per_sample, theta, v)
    leaves = {k: p.clone().requires_grad_(True) for k, p in theta.items()}
    losses = per_sample(leaves)
    expected = []
    for i in range(3):
        grads = torch.autograd.grad(losses[i], list(leaves.values()), retain_graph=True)
        expected.append(sum((gr * v[k]).sum() for k, gr in zip(leaves, grads, strict=True)))
    torch.testing.assert_close(c, torch.stack(expected), rtol=1e-9, atol=1e-9)
    assert c.abs().min() > 1e-3
    # Along the backbone alone the RoI loss moves only through the pooled features.
    backbone = {k: (t if k.startswith("backbone.") else torch.zeros_like(t)) for k, t in v.items()}

    def roi_terms(th: dict[str, torch.Tensor]) -> torch.Tensor:
        fixed = dict(model.named_buffers())
        terms = faster_rcnn_loss_terms(functional_call(model, {**fixed, **th}, (images(3),)), TARGETS, s)
        return terms["loss_classifier"] + terms["loss_box_reg"]

    _, roi = jvp(roi_terms, (theta,), (backbone,))
    assert roi.abs().min() > 1e-6


def scene(seed: int) -> tuple[torch.Tensor, list[list[float]]]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, SIZE, SIZE, generator=g) * 0.2 + 0.4
    rows = []
    for k, (x0, y0, w) in enumerate([(6, 8, 22), (34, 30, 26)]):
        cls = (seed + k) % 2
        image[:, y0:y0 + w, x0:x0 + w] = torch.tensor([1.0, 0.1, 0.1] if cls == 0 else [0.1, 0.1, 1.0])[:, None, None]
        rows.append([x0, y0, x0 + w, y0 + w, cls])
    return image, rows


def test_training_reduces_the_loss() -> None:
    s = tiny_settings()
    torch.manual_seed(0)
    model = build_faster_rcnn(s).train()
    data = [scene(0), scene(1)]
    x = torch.stack([d[0] for d in data])
    t = targets_of([d[1] for d in data])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    history, objectness = [], []
    for _ in range(30):
        terms = faster_rcnn_loss_terms(model(x), t, s)
        loss = sum(terms.values()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        objectness.append(terms["loss_objectness"].mean().item())
    # The total is noisy: the box head meets its first foreground proposals only once the RPN
    # finds the objects (no ground-truth boxes join the proposals), and its loss jumps then.
    assert sum(history[-5:]) / 5 < 0.75 * history[0], history
    assert objectness[-1] < 0.8 * objectness[0], objectness


def test_detections_match_torchvision_postprocess(model: FasterRCNNDetector) -> None:
    s = tiny_settings(conf_threshold=0.3, nms_iou=0.5, max_detections=4)
    model = copy.deepcopy(model)
    torch.nn.init.normal_(model.roi_heads["box_predictor"].cls_score.weight, std=0.3)
    torch.nn.init.normal_(model.roi_heads["box_predictor"].bbox_pred.weight, std=0.3)
    with torch.no_grad():
        out = model(images(3))
    detections = faster_rcnn_detections(out, s)
    parts = split_outputs(out, s)
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), s.conf_threshold, s.nms_iou,
                     s.max_detections)
    assert len(detections) == 3
    total = 0
    for i, d in enumerate(detections):
        assert set(d) == {"boxes", "scores", "labels"}
        n = d["scores"].shape[0]
        total += n
        assert d["boxes"].shape == (n, 4) and d["labels"].shape == (n,) and n <= s.max_detections
        assert d["labels"].dtype == torch.int64 and ((d["labels"] >= 0) & (d["labels"] < len(CLASSES))).all()
        assert (d["scores"] > s.conf_threshold).all() and (d["scores"][:-1] >= d["scores"][1:]).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= SIZE).all()
        valid = parts.valid[i] > 0.5
        boxes, scores, labels = heads.postprocess_detections(
            parts.class_logits[i][valid], parts.box_regression[i][valid].flatten(1), [parts.proposals[i][valid]],
            [(SIZE, SIZE)])
        torch.testing.assert_close(d["boxes"], boxes[0])
        torch.testing.assert_close(d["scores"], scores[0])
        torch.testing.assert_close(d["labels"], labels[0] - 1)
    assert total > 0


# ------------------------------------------------------------------------------- weights ---
def test_weights_round_trip(tmp_path) -> None:
    torch.manual_seed(5)
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path / "frcnn.pt"
    torch.save(reference.state_dict(), path)
    model = build_faster_rcnn(tiny_settings(weights=str(path), trainable_backbone_layers=2))
    state = model.state_dict()
    for k, v in reference.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    # A pretrained backbone is torchvision's: frozen statistics and its early stages frozen.
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not model.backbone.body["0"][0].weight.requires_grad
    assert model.backbone.body["16"][0].weight.requires_grad and model.roi_heads["box_head"].fc6.weight.requires_grad

    again = tmp_path / "again.pt"
    torch.save({"model": model.state_dict()}, again)
    reloaded = build_faster_rcnn(tiny_settings(weights=str(again)))
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_weights_of_other_class_counts_and_backbones(tmp_path) -> None:
    coco = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "coco.pt"
    torch.save(coco.state_dict(), path)
    with pytest.warns(UserWarning, match="box predictor has another class count"):
        model = build_faster_rcnn(tiny_settings(weights=str(path)))
    torch.testing.assert_close(model.roi_heads["box_head"].fc6.weight, coco.roi_heads.box_head.fc6.weight)
    assert model.roi_heads["box_predictor"].cls_score.weight.shape == (3, 1024)

    body = mobilenet_v3_large(weights=None)
    path = tmp_path / "imagenet.pth"
    torch.save(body.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_faster_rcnn(tiny_settings(weights=str(path)))
    torch.testing.assert_close(model.backbone.body["3"].block[0][0].weight, body.features[3].block[0][0].weight)

    bad = tmp_path / "bad.pt"
    torch.save({"something.else": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="do not fit"):
        build_faster_rcnn(tiny_settings(weights=str(bad)))
    with pytest.raises(FileNotFoundError):
        build_faster_rcnn(tiny_settings(weights=str(tmp_path / "missing.pt")))


def test_detections_equal_torchvision_model_end_to_end(tmp_path) -> None:
    # At 320 px the anchors are torchvision's own; with its RPN score threshold off, 1000
    # candidates per level and P proposals, torchvision's model in eval mode must detect the same.
    size, proposals = 320, 30
    torch.manual_seed(6)
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=proposals, rpn_score_thresh=0.0, box_score_thresh=0.01, box_nms_thresh=0.5,
        box_detections_per_img=20)
    torch.nn.init.normal_(reference.rpn.head.cls_logits.weight, std=0.05)
    torch.nn.init.normal_(reference.rpn.head.bbox_pred.weight, std=0.02)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    reference.train()
    with torch.no_grad():
        reference.backbone(reference.transform(list(x.float()))[0].tensors)
    reference.eval()
    # Saved in float32, the model's dtype when it loads; both compare in float64.
    path = tmp_path / "reference.pt"
    torch.save(reference.state_dict(), path)
    reference.double()
    s = FasterRCNNSettings(input_size=size, proposals=proposals, classes=CLASSES, weights=str(path),
                           conf_threshold=0.01, nms_iou=0.5, max_detections=20)
    model = build_faster_rcnn(s).double().eval()
    with torch.no_grad():
        ours = faster_rcnn_detections(model(x), s)
        theirs = reference(list(x))
    for a, b in zip(ours, theirs, strict=True):
        assert a["scores"].numel() > 0
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["labels"], b["labels"] - 1)
