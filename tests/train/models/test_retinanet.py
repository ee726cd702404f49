"""RetinaNet: anchors, matching, the in-graph top-1 decode, training on one image, weights files."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from bpedge.train.models import build_detector, load_detector_weights, model_complexity
from bpedge.train.models._backbone import build_backbone, feature_grid_sizes
from bpedge.train.presets import get_preset
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import box_iou

TINY = get_preset("tiny").detector
# The anchor score's own behaviour, without the preset's presence head.
NO_PRESENCE = dataclasses.replace(TINY, presence_head=False, empty_fraction=0.0)
PAPER = get_preset("paper").detector


def synthetic_frame(hw: tuple[int, int], box: tuple[float, float, float, float], seed: int = 0):
    """Speckle noise with a bright ellipse filling ``box``: (1, 1, H, W) float32, z-scored."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    img = torch.rand((h, w), generator=g) * 0.5
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] += 1.0
    return ((img - img.mean()) / img.std())[None, None]


@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet18", "resnet50"])
@pytest.mark.parametrize("hw", [(160, 224), (100, 130)])
def test_feature_grid_sizes_match_the_real_feature_maps(backbone, hw):
    net = build_backbone(backbone, 16).eval()
    with torch.no_grad():
        maps = net(torch.zeros(1, 1, *hw))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == feature_grid_sizes(hw)
    assert all(m.shape[1] == 16 for m in maps.values())


def test_anchors_tile_each_level_at_its_stride_with_the_configured_sizes():
    model = build_detector(TINY)
    per_loc = len(TINY.anchor_scales) * len(TINY.aspect_ratios)
    grids = feature_grid_sizes(TINY.input_hw)
    assert model.anchors.shape == (sum(h * w for h, w in grids) * per_loc, 4)
    start = 0
    for level, ((gh, gw), size) in enumerate(zip(grids, TINY.anchor_sizes)):
        stride = 2 ** (level + 3)
        level_anchors = model.anchors[start : start + gh * gw * per_loc].view(gh, gw, per_loc, 4)
        start += gh * gw * per_loc
        centres = (level_anchors[..., :2] + level_anchors[..., 2:]) / 2
        # Centre of location (row, col) sits at (col * stride, row * stride), within rounding.
        expect_x = torch.arange(gw)[None, :, None] * stride
        expect_y = torch.arange(gh)[:, None, None] * stride
        assert float((centres[..., 0] - expect_x).abs().max()) <= 1.0
        assert float((centres[..., 1] - expect_y).abs().max()) <= 1.0
        areas = ((level_anchors[0, 0, :, 2] - level_anchors[0, 0, :, 0])
                 * (level_anchors[0, 0, :, 3] - level_anchors[0, 0, :, 1]))
        wanted = torch.tensor([(size * s) ** 2 for _ in TINY.aspect_ratios for s in TINY.anchor_scales])
        assert torch.allclose(areas, wanted, rtol=0.15)


@pytest.mark.parametrize(
    "box",
    [(50.0, 40.0, 110.0, 90.0), (3.0, 5.0, 9.0, 11.0), (0.0, 0.0, 224.0, 160.0), (200.0, 7.0, 224.0, 150.0)],
)
def test_every_target_gets_a_positive_anchor_and_clear_ones_are_background(box):
    # The published thresholds (0.5 / 0.4), whatever the preset uses.
    model = build_detector(dataclasses.replace(TINY, fg_iou=0.5, bg_iou=0.4))
    matched = model.match(torch.tensor([box]))
    assert matched.shape == (1, model.anchors.shape[0])
    assert int((matched == 0).sum()) >= 1
    iou = box_iou(torch.tensor([box]), model.anchors)[0]
    best = iou == iou.max()  # low-quality matches: the best anchors are positive whatever their IoU
    assert bool((matched[0][best | (iou >= 0.5)] == 0).all())
    assert bool((matched[0][(iou < 0.4) & ~best] == -1).all())
    assert bool((matched[0][(iou >= 0.4) & (iou < 0.5) & ~best] == -2).all())


def test_predict_decodes_the_best_anchor_as_the_box_coder_defines():
    torch.manual_seed(0)
    model = build_detector(NO_PRESENCE).eval()
    nn.init.normal_(model.classification_head.cls_logits.weight, std=0.5)
    nn.init.normal_(model.regression_head.bbox_reg.weight, std=0.05)
    x = torch.randn(2, 1, *TINY.input_hw)
    with torch.no_grad():
        scores, boxes = model(x)
        logits, deltas = model.head_outputs(x)
    h, w = TINY.input_hw
    for i in range(2):
        best = int(logits[i, :, 0].argmax())
        assert math.isclose(float(scores[i]), 1 / (1 + math.exp(-float(logits[i, best, 0]))), rel_tol=1e-5)
        ax0, ay0, ax1, ay1 = model.anchors[best].tolist()
        dx, dy, dw, dh = deltas[i, best].tolist()
        aw, ah = ax1 - ax0, ay1 - ay0
        cx, cy = ax0 + aw / 2 + dx * aw, ay0 + ah / 2 + dy * ah
        bw, bh = aw * math.exp(dw), ah * math.exp(dh)
        want = [min(max(v, 0), lim) for v, lim in zip(
            [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], [w, h, w, h])]
        assert boxes[i].tolist() == pytest.approx(want, abs=1e-3)


def test_eval_boxes_stay_inside_the_image_even_when_the_deltas_explode():
    model = build_detector(TINY).eval()
    nn.init.constant_(model.regression_head.bbox_reg.bias, 5.0)  # every box e**5 times its anchor
    with torch.no_grad():
        _, boxes = model(torch.randn(2, 1, *TINY.input_hw))
    h, w = TINY.input_hw
    assert bool(torch.isfinite(boxes).all())
    assert float(boxes[:, 0::2].min()) >= 0 and float(boxes[:, 0::2].max()) <= w
    assert float(boxes[:, 1::2].min()) >= 0 and float(boxes[:, 1::2].max()) <= h


@pytest.fixture(scope="module")
def overfit():
    """The tiny detector (without its presence head: the RetinaNet losses alone) after 25 Adam
    steps on one synthetic image with one box."""
    torch.manual_seed(0)
    box = (60.0, 50.0, 124.0, 98.0)
    image = synthetic_frame(TINY.input_hw, box)
    target = torch.tensor([box])
    model = build_detector(NO_PRESENCE).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(25):
        losses = model(image, target)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        optimiser.zero_grad()
        sum(losses.values()).backward()
        optimiser.step()
    return model, image, target, history


def test_training_on_one_image_drives_both_losses_down(overfit):
    _, _, _, history = overfit
    assert all(math.isfinite(v) for step in history for v in step.values())
    for key in ("classification", "box_regression"):
        first = sum(h[key] for h in history[:3]) / 3
        last = sum(h[key] for h in history[-3:]) / 3
        assert last < 0.6 * first, key


def test_overfit_detector_finds_its_training_box(overfit):
    model, image, target, _ = overfit
    model.eval()
    with torch.no_grad():
        scores, boxes = model(image)
    assert float(box_iou(boxes, target)[0, 0]) > 0.5
    assert float(scores[0]) > 0.1  # well above the 0.01 prior it started from


def test_losses_in_eval_mode_are_the_validation_losses(overfit):
    model, image, target, _ = overfit
    model.eval()
    with torch.no_grad():
        losses = model.losses(image, target)
    assert set(losses) == {"classification", "box_regression"}
    assert all(v.ndim == 0 and bool(torch.isfinite(v)) for v in losses.values())


@pytest.mark.parametrize(
    "boxes,match",
    [
        (torch.tensor([[10.0, 10.0, 5.0, 40.0]]), "positive area"),
        (torch.tensor([[10.0, 10.0, 50.0, float("nan")]]), "NaN"),
        (torch.tensor([10.0, 10.0, 50.0, 40.0]), r"\(N, 4\)"),
        (torch.tensor([[10.0, 10.0, 50.0, 40.0]] * 2), "one target box per image"),
    ],
)
def test_bad_target_boxes_are_refused_with_what_was_expected(boxes, match):
    model = build_detector(TINY).train()
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(1, 1, *TINY.input_hw), boxes)


def test_mode_mismatches_are_refused():
    model = build_detector(TINY)
    x = torch.zeros(1, 1, *TINY.input_hw)
    with pytest.raises(ValueError, match="needs target boxes"):
        model.train()(x)
    with pytest.raises(ValueError, match="losses"):
        model.eval()(x, torch.tensor([[1.0, 1.0, 9.0, 9.0]]))


def test_unknown_backbone_and_wrong_anchor_levels_are_refused():
    with pytest.raises(ValueError, match="resnet_tiny"):
        build_detector(dataclasses.replace(TINY, backbone="vgg16"))
    with pytest.raises(ValueError, match="P3..P7"):
        build_detector(dataclasses.replace(TINY, anchor_sizes=(16, 32, 64)))


def test_whole_detector_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    source = build_detector(TINY).eval()
    path = tmp_path / "detector.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_detector(TINY, weights=path).eval()
    x = torch.randn(2, 1, *TINY.input_hw)
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x)):
            torch.testing.assert_close(a, b)


def test_a_torchvision_resnet_state_dict_loads_as_the_backbone_with_a_grey_stem(tmp_path):
    torch.manual_seed(3)
    rgb = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(rgb.state_dict(), path)
    model = build_detector(dataclasses.replace(TINY, backbone="resnet18"), weights=path)
    grey_stem = model.backbone.body.conv1.weight
    torch.testing.assert_close(grey_stem, rgb.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.backbone.body.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)


def test_weights_that_fit_neither_detector_nor_backbone_are_refused(tmp_path):
    paper_sized = tmp_path / "resnet18_detector.pt"
    torch.save(build_detector(dataclasses.replace(TINY, backbone="resnet18")).state_dict(), paper_sized)
    with pytest.raises(ValueError, match="does not fit") as refused:
        build_detector(TINY, weights=paper_sized)
    assert "\n" not in str(refused.value)  # the CLI prints an error as one line
    stranger = tmp_path / "stranger.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, stranger)
    with pytest.raises(ValueError, match="neither"):
        build_detector(TINY, weights=stranger)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_detector_weights(build_detector(TINY), not_a_state_dict)
    with pytest.raises(FileNotFoundError):
        build_detector(TINY, weights=tmp_path / "missing.pt")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_numbers_are_refused_naming_the_file(tmp_path, value):
    # Right names and shapes, values NaN or Infinity: they trained into "training loss became
    # nan; lower --lr or check the data", blaming the rate, after the run folder was made.
    state = build_detector(TINY).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], value)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"broken\.pt holds values that are not finite.*{name}"):
        build_detector(TINY, weights=path)


def test_parameter_counts_of_the_tiny_and_paper_detectors():
    tiny_params = sum(p.numel() for p in build_detector(TINY).parameters())
    paper_params = sum(p.numel() for p in build_detector(PAPER).parameters())
    assert tiny_params < 500_000
    # ResNet-50 (23.5 M without fc) + FPN (3.3 M) + two 4-conv heads (4.8 M) + output convs.
    assert 28_000_000 < paper_params < 36_000_000


def test_tiny_detector_flops_fit_a_two_core_cpu():
    _, flops = model_complexity(build_detector(TINY), (1, 1, *TINY.input_hw))
    assert flops < 1e9


def test_an_empty_frame_makes_every_anchor_a_negative_and_adds_no_box_loss():
    model = build_detector(NO_PRESENCE).eval()  # BatchNorm from running stats: per-image features
    box = (60.0, 50.0, 124.0, 98.0)
    images = torch.cat([synthetic_frame(TINY.input_hw, box), synthetic_frame(TINY.input_hw, box, 1)])
    boxes = torch.tensor([box, (0.0, 0.0, 0.0, 0.0)])  # the empty frame's row is a placeholder
    matched = model.match(boxes, torch.tensor([1.0, 0.0]))
    assert bool((matched[0] == 0).any())
    assert bool((matched[1] == -1).all())
    with torch.no_grad():
        both = model.losses(images, boxes, torch.tensor([1.0, 0.0]))
        first = model.losses(images[:1], boxes[:1])
    # The batch mean: the BP frame's box loss over two images, none from the empty one.
    assert float(both["box_regression"]) == pytest.approx(float(first["box_regression"]) / 2,
                                                          rel=1e-5)


def _trained_on_a_bp_and_an_empty_frame(cfg):
    """The detector ``cfg`` describes after 25 Adam steps on one BP frame and one empty frame
    (speckle only); returns the model in eval mode, the two images and their target boxes."""
    torch.manual_seed(0)
    box = (60.0, 50.0, 124.0, 98.0)
    bp = synthetic_frame(TINY.input_hw, box)
    empty = synthetic_frame(TINY.input_hw, (0.0, 0.0, 0.0, 0.0), seed=1)
    images, boxes = torch.cat([bp, empty]), torch.tensor([box, (0.0, 0.0, 0.0, 0.0)])
    model = build_detector(cfg).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(25):
        losses = model(images, boxes, torch.tensor([1.0, 0.0]))
        optimiser.zero_grad()
        sum(losses.values()).backward()
        optimiser.step()
    return model.eval(), images, boxes


def test_training_on_an_empty_frame_lowers_its_score_but_not_the_bp_frames():
    model, images, boxes = _trained_on_a_bp_and_an_empty_frame(NO_PRESENCE)
    with torch.no_grad():
        scores, predicted = model(images)
    assert float(scores[0]) > 2 * float(scores[1])
    assert float(box_iou(predicted[:1], boxes[:1])[0, 0]) > 0.5


@pytest.mark.parametrize(
    "present,match",
    [
        (torch.tensor([1.0, 0.0]), r"present must be \(N,\)"),
        (torch.tensor([[1.0]]), r"present must be \(N,\)"),
        (torch.tensor([0.5]), "only 1"),
    ],
)
def test_bad_present_flags_are_refused(present, match):
    model = build_detector(TINY).train()
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(1, 1, *TINY.input_hw), torch.tensor([[1.0, 1.0, 9.0, 9.0]]), present)


def test_a_bp_frame_still_needs_a_real_box_when_flags_are_given():
    model = build_detector(TINY).train()
    with pytest.raises(ValueError, match="positive area"):
        model(torch.zeros(2, 1, *TINY.input_hw), torch.zeros(2, 4), torch.tensor([1.0, 0.0]))


WITH_PRESENCE = dataclasses.replace(TINY, presence_head=True, empty_fraction=0.5)


def test_the_presence_head_gives_the_score_and_the_best_anchor_still_gives_the_box():
    torch.manual_seed(0)
    model = build_detector(WITH_PRESENCE).eval()
    image = synthetic_frame(TINY.input_hw, (60.0, 50.0, 124.0, 98.0))
    with torch.no_grad():
        logits, deltas, presence = model.all_head_outputs(image)
        scores, boxes = model(image)
        anchor_scores, anchor_boxes = model.decode(logits, deltas)
    assert presence is not None and presence.shape == (1,)
    assert float(scores[0]) == pytest.approx(float(torch.sigmoid(presence[0])), abs=1e-7)
    assert float(scores[0]) != pytest.approx(float(anchor_scores[0]), abs=1e-4)
    assert torch.equal(boxes, anchor_boxes)
    # Without the head nothing changes: no third output, the anchor score.
    plain = build_detector(NO_PRESENCE).eval()
    with torch.no_grad():
        assert plain.all_head_outputs(image)[2] is None
        assert "presence" not in plain.losses(image, torch.tensor([[60.0, 50.0, 124.0, 98.0]]))


def test_with_a_presence_head_candidates_keep_the_anchor_order_and_carry_the_frame_score():
    torch.manual_seed(0)
    model = build_detector(WITH_PRESENCE).eval()
    images = torch.cat([synthetic_frame(TINY.input_hw, (60.0, 50.0, 124.0, 98.0)),
                        synthetic_frame(TINY.input_hw, (200.0, 120.0, 280.0, 180.0))])
    with torch.no_grad():
        found = model.candidates(images, 4)
        scores, boxes = model(images)
        presence = model.all_head_outputs(images)[2]
        head = model.presence_head
        model.presence_head = None  # the same weights' anchors alone
        anchors_only = model.candidates(images, 4)
        model.presence_head = head
    assert presence is not None
    for i, ((s, b), (s_anchor, b_anchor)) in enumerate(zip(found, anchors_only)):
        assert len(s) == len(b) == len(s_anchor) >= 2
        torch.testing.assert_close(b, b_anchor)  # the boxes and their order are the anchors'
        torch.testing.assert_close(s, torch.sigmoid(presence[i]).expand_as(s))
        torch.testing.assert_close(b[0], boxes[i])  # the first box is predict's, with its score
        assert float(s[0]) == pytest.approx(float(scores[i]), abs=1e-7)
        assert not torch.allclose(s_anchor, s)


def test_with_a_presence_head_an_empty_frame_reaches_only_the_presence_loss():
    model = build_detector(WITH_PRESENCE).eval()
    box = (60.0, 50.0, 124.0, 98.0)
    images = torch.cat([synthetic_frame(TINY.input_hw, box), synthetic_frame(TINY.input_hw, box, 1)])
    boxes = torch.tensor([box, (0.0, 0.0, 0.0, 0.0)])
    with torch.no_grad():
        both = model.losses(images, boxes, torch.tensor([1.0, 0.0]))
        first = model.losses(images[:1], boxes[:1])
        presence = model.all_head_outputs(images)[2]
    assert presence is not None
    # Focal and box losses: the BP frame's alone, averaged over the two frames.
    for name in ("classification", "box_regression"):
        assert float(both[name]) == pytest.approx(float(first[name]) / 2, rel=1e-5)
    wanted = torch.nn.functional.binary_cross_entropy_with_logits(presence, torch.tensor([1.0, 0.0]))
    assert float(both["presence"]) == pytest.approx(float(wanted), rel=1e-6)


def test_training_the_presence_head_separates_an_empty_frame_from_a_bp_frame():
    model, images, boxes = _trained_on_a_bp_and_an_empty_frame(WITH_PRESENCE)
    with torch.no_grad():
        scores, predicted = model(images)
    assert float(scores[0]) > 0.7 and float(scores[1]) < 0.3
    assert float(box_iou(predicted[:1], boxes[:1])[0, 0]) > 0.5
