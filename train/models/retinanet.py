"""RetinaNet for one target per frame: trains with focal + box loss, predicts the top-1 box in-graph.

Decomposed as torchvision's RetinaNet is (backbone with FPN, two heads, anchors, box coder,
matcher), each built by :func:`build_detector` from a :class:`DetectorConfig` and each
replaceable through the constructor. Unlike torchvision's model there is no ``transform``
(frames arrive already resized to ``cfg.input_hw`` and z-score normalised) and no NMS: the BP is
a single structure, so evaluation keeps the highest-scoring anchor, which exports to ONNX as
ArgMax + Gather over a fixed anchor set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.ops import box_iou, generalized_box_iou_loss, nms

from ..losses import focal_loss
from ..presets import DetectorConfig
from ._anchors import anchor_generator, anchors_for_grids
from ._backbone import FPN_LEVELS, build_backbone, feature_grid_sizes
from ._heads import ClassificationHead, PresenceHead, RegressionHead

BoxLoss = Literal["l1", "smooth_l1", "giou"]
BOX_LOSSES = ("l1", "smooth_l1", "giou")
# Detectron's RetinaNet smooth-L1 transition point, in box-coder units.
SMOOTH_L1_BETA = 0.11
FG_IOU, BG_IOU = 0.5, 0.4


def default_matcher(fg_iou: float = FG_IOU, bg_iou: float = BG_IOU) -> Matcher:
    """IoU >= ``fg_iou`` foreground, < ``bg_iou`` background, in between ignored; the best anchor
    always wins.

    ``allow_low_quality_matches`` guarantees every target at least one positive anchor, which a
    small BP between anchor sizes could otherwise miss entirely. A single target per frame gets
    few positives at 0.5; a lower ``fg_iou`` gives it more (and the box head more examples).
    """
    if not 0.0 < bg_iou <= fg_iou <= 1.0:
        raise ValueError(f"need 0 < bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
    return Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)


def default_box_coder() -> BoxCoder:
    """torchvision RetinaNet's encoding: (dx, dy, log dw, log dh) with unit weights."""
    return BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


class RetinaNetDetector(nn.Module):
    """Single-class RetinaNet on one-channel frames of a fixed size.

    Train mode: ``forward(images (N,1,H,W) float32, boxes (N,4) float32)`` -> ``{"classification",
    "box_regression"}`` scalar losses (their sum is what to minimise). Boxes are x0, y0, x1, y1
    in input pixels (continuous edges), one target per image.

    Eval mode: ``forward(images)`` -> ``(scores (N,) float32 in [0, 1], boxes (N,4) float32)``:
    the best anchor's sigmoid score and its decoded box, clipped to [0, W] x [0, H]. With a
    ``presence_head`` the score is that head's probability that the frame holds a BP instead (the
    box is still the best anchor's), trained with binary cross-entropy on BP and empty frames;
    empty frames then teach only that head (their anchors are ignored by the focal loss), so
    they leave localisation as it was.
    """

    anchors: Tensor  # (A_total, 4) float32 buffer, x0 y0 x1 y1 in input pixels

    def __init__(
        self,
        backbone: nn.Module,
        classification_head: nn.Module,
        regression_head: nn.Module,
        anchors: Tensor,
        input_hw: tuple[int, int],
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_coder: BoxCoder | None = None,
        matcher: Matcher | None = None,
        box_loss: BoxLoss = "l1",
        top_k: int = 1,
        presence_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if anchors.ndim != 2 or anchors.shape[1] != 4 or anchors.shape[0] == 0:
            raise ValueError(f"anchors must be (A, 4) with A > 0, got {tuple(anchors.shape)}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {box_loss!r}; choose one of {BOX_LOSSES}")
        if not 1 <= top_k <= anchors.shape[0]:
            raise ValueError(f"top_k must be in [1, {anchors.shape[0]}] (the anchors), got {top_k}")
        self.backbone = backbone
        self.classification_head = classification_head
        self.regression_head = regression_head
        self.presence_head = presence_head
        # Derived from the config alone, so not saved with the weights.
        self.register_buffer("anchors", anchors.to(torch.float32), persistent=False)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_coder = box_coder if box_coder is not None else default_box_coder()
        self.matcher = matcher if matcher is not None else default_matcher()
        self.box_loss = box_loss
        self.top_k = int(top_k)

    def forward(
        self, images: Tensor, boxes: Tensor | None = None, present: Tensor | None = None
    ) -> dict[str, Tensor] | tuple[Tensor, Tensor]:
        """Losses in train mode (``boxes`` required, ``present`` optional: see :meth:`losses`),
        ``(scores, boxes)`` in eval mode."""
        if self.training:
            if boxes is None:
                raise ValueError(
                    "in train mode the detector needs target boxes (N, 4); call .eval() to predict"
                )
            return self.losses(images, boxes, present)
        if boxes is not None:
            raise ValueError(
                "in eval mode forward(images) predicts; call .losses(images, boxes) for losses"
            )
        return self.predict(images)

    def head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (N, A_total, 1) and box deltas (N, A_total, 4) for every anchor."""
        logits, deltas, _ = self.all_head_outputs(images)
        return logits, deltas

    def all_head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`head_outputs` and the presence head's logits (N,) (``None`` without one)."""
        self._check_images(images)
        features = list(self.backbone(images).values())
        logits = self.classification_head(features)
        deltas = self.regression_head(features)
        if logits.shape[1] != self.anchors.shape[0]:
            raise ValueError(
                f"the heads give {logits.shape[1]} anchors but {self.anchors.shape[0]} were laid "
                f"out for input {self.input_hw}: the backbone's feature sizes do not match"
            )
        presence = None if self.presence_head is None else self.presence_head(features)
        return logits, deltas, presence

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Per image: a score (N,) in [0, 1] (the best anchor's, or the presence head's) and a box
        (N, 4) clipped to the input: the best anchor's (``top_k`` 1) or the score-weighted mean
        of the ``top_k`` best anchors' boxes (a vote that steadies the box when neighbouring
        anchors disagree)."""
        return self.decode(*self.all_head_outputs(images))

    def decode(self, logits: Tensor, deltas: Tensor,
               presence: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`predict` from head outputs (logits (N, A, 1), deltas (N, A, 4), presence logits
        (N,) or ``None``): the exported decode, also for head outputs combined outside the model
        (e.g. averaged over models). With ``presence`` the score is its sigmoid."""
        scores, boxes = self._decode_anchors(logits, deltas)
        if presence is not None:
            scores = torch.sigmoid(presence)
        return scores, boxes

    def _decode_anchors(self, logits: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
        if self.top_k == 1:
            # Sigmoid is monotonic: pick on logits, squash only the winner.
            best_logit, best = logits[..., 0].max(dim=1)  # (N,), (N,)
            scores = torch.sigmoid(best_logit)
            # repeat and [:, 0] rather than expand(-1, ...) and squeeze: both keep the exported
            # graph free of shape arithmetic (If/Where nodes) around the dynamic batch axis.
            best_deltas = torch.gather(deltas, 1, best.view(-1, 1, 1).repeat(1, 1, 4))[:, 0]
            best_anchors = self.anchors.index_select(0, best)  # (N, 4)
            decoded = self.box_coder.decode_single(best_deltas, best_anchors)  # (N, 4)
        else:
            top_logits, top = logits[..., 0].topk(self.top_k, dim=1)  # (N, K), (N, K)
            top_scores = torch.sigmoid(top_logits)
            scores = top_scores[:, 0]
            top_deltas = torch.gather(deltas, 1, top.unsqueeze(2).repeat(1, 1, 4))  # (N, K, 4)
            top_anchors = self.anchors[top]  # (N, K, 4)
            boxes_k = self.box_coder.decode_single(
                top_deltas.reshape(-1, 4), top_anchors.reshape(-1, 4)
            ).reshape(top_deltas.shape)  # (N*K, 4) -> (N, K, 4)
            weights = top_scores / top_scores.sum(dim=1, keepdim=True).clamp(min=1e-12)
            decoded = (boxes_k * weights.unsqueeze(2)).sum(dim=1)  # (N, 4)
        return scores, self._clip(decoded)

    def _clip(self, boxes: Tensor) -> Tensor:
        """(M, 4) x0, y0, x1, y1 clamped to the input."""
        h, w = self.input_hw
        return torch.stack(
            [
                boxes[:, 0].clamp(0.0, float(w)),
                boxes[:, 1].clamp(0.0, float(h)),
                boxes[:, 2].clamp(0.0, float(w)),
                boxes[:, 3].clamp(0.0, float(h)),
            ],
            dim=1,
        )

    def candidates(self, images: Tensor, k: int, nms_iou: float = 0.3) -> list[tuple[Tensor, Tensor]]:
        """Per image, up to ``k`` boxes that non-maximum suppression (IoU > ``nms_iou``) keeps
        among all anchors, best anchor first: ``(scores (k',), boxes (k', 4))``, boxes decoded
        and clipped to the input as :meth:`predict` clips them. The scores are the anchors'; with
        a presence head every box carries the frame's score (the head's probability), as
        :meth:`predict` gives it, since the head scores the frame, not a place in it. For
        training only (the exported detector keeps its one-box contract): the best box away
        from the BP is the place this detector most easily mistakes for it."""
        logits, deltas, presence = self.all_head_outputs(images)
        out = []
        for i, (logit, delta) in enumerate(zip(logits[..., 0], deltas)):
            # Only the best anchors can survive NMS into the top k; decoding all would be waste.
            top = logit.topk(min(logit.shape[0], 50 * k)).indices
            boxes = self._clip(self.box_coder.decode_single(delta[top], self.anchors[top]))
            scores = torch.sigmoid(logit[top])
            keep = nms(boxes, scores, nms_iou)[:k]
            kept = scores[keep]
            if presence is not None:
                kept = torch.sigmoid(presence[i]).expand_as(kept).clone()
            out.append((kept, boxes[keep]))
        return out

    def match(self, boxes: Tensor, present: Tensor | None = None) -> Tensor:
        """Per anchor, 0 (foreground), -1 (background) or -2 (ignored): (N, A_total) int64.
        An image whose ``present`` is 0 has no BP: all its anchors are background."""
        background = torch.full((self.anchors.shape[0],), -1, dtype=torch.int64,
                                device=self.anchors.device)
        flags = [True] * len(boxes) if present is None else [bool(v) for v in present.tolist()]
        matched = [self.matcher(box_iou(b[None], self.anchors)) if has_bp else background
                   for b, has_bp in zip(boxes, flags)]
        return torch.stack(matched)

    def losses(
        self, images: Tensor, boxes: Tensor, present: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Focal loss over non-ignored anchors and box loss over positives, each divided by the
        image's number of positive anchors (at least 1), then averaged over the batch
        (torchvision's recipe); with a presence head also ``"presence"``, its binary
        cross-entropy against ``present``, averaged over the batch. Minimise their sum.

        ``present``: (N,) 1/0 per image, ``None`` for all 1. An image with 0 has no BP: its box row
        is ignored, every anchor is a negative, so the classification loss teaches the score what
        an empty frame looks like, and it adds no box loss (with a presence head its anchors are
        ignored instead and only the presence loss sees it). Works in either mode; in eval mode
        (BatchNorm frozen) under ``torch.no_grad`` it gives validation losses.
        """
        self._check_present(present, images)
        self._check_box_shape(boxes, images)
        # Only the rows of images with a BP must be boxes; the others are placeholders.
        self._check_box_values(boxes if present is None else boxes[present.to(torch.bool)])
        boxes = boxes.to(device=self.anchors.device, dtype=self.anchors.dtype)
        logits, deltas, presence = self.all_head_outputs(images)
        matched = self.match(boxes, present)
        if presence is not None and present is not None:
            # Empty frames teach the presence head only: with their anchors all negatives the
            # focal loss would also pull localisation towards them (measured in the tiny study).
            empty = ~present.to(device=matched.device, dtype=torch.bool)
            matched[empty] = Matcher.BETWEEN_THRESHOLDS
        foreground = matched >= 0
        num_fg = foreground.sum(dim=1).clamp(min=1).to(logits.dtype)  # (N,)

        valid = matched != Matcher.BETWEEN_THRESHOLDS
        per_anchor = focal_loss(
            logits[..., 0], foreground.to(logits.dtype), self.focal_alpha, self.focal_gamma,
            reduction="none",
        )
        classification = ((per_anchor * valid).sum(dim=1) / num_fg).mean()

        img_idx, anchor_idx = foreground.nonzero(as_tuple=True)
        per_box = self._box_loss_per_anchor(
            deltas[img_idx, anchor_idx], self.anchors[anchor_idx], boxes[img_idx]
        )
        box_regression = (per_box / num_fg[img_idx]).sum() / images.shape[0]
        losses = {"classification": classification, "box_regression": box_regression}
        if presence is not None:
            target = (torch.ones_like(presence) if present is None
                      else present.to(device=presence.device, dtype=presence.dtype))
            losses["presence"] = F.binary_cross_entropy_with_logits(presence, target)
        return losses

    def _box_loss_per_anchor(self, deltas: Tensor, anchors: Tensor, targets: Tensor) -> Tensor:
        """(P, 4) deltas, anchors and target boxes -> (P,) loss."""
        if self.box_loss == "giou":
            predicted = self.box_coder.decode_single(deltas, anchors)
            return generalized_box_iou_loss(predicted, targets, reduction="none")
        wanted = self.box_coder.encode_single(targets, anchors)
        if self.box_loss == "smooth_l1":
            return F.smooth_l1_loss(deltas, wanted, beta=SMOOTH_L1_BETA, reduction="none").sum(1)
        return F.l1_loss(deltas, wanted, reduction="none").sum(1)

    def _check_images(self, images: Tensor) -> None:
        expected = (1, *self.input_hw)
        if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"detector input must be (N, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(grey frames resized to input_hw), got {got}"
            )
        if not images.is_floating_point():
            raise ValueError(f"detector input must be floating point (z-scored), got {images.dtype}")

    def _check_present(self, present: Tensor | None, images: Tensor) -> None:
        if present is None:
            return
        if not isinstance(present, Tensor) or present.ndim != 1 or (
            isinstance(images, Tensor) and present.shape[0] != images.shape[0]
        ):
            got = tuple(present.shape) if isinstance(present, Tensor) else type(present).__name__
            raise ValueError(f"present must be (N,) 1/0 per image, got {got}")
        if not bool(((present == 0) | (present == 1)).all()):
            raise ValueError("present must hold only 1 (BP in the frame) or 0 (no BP)")

    def _check_box_shape(self, boxes: Tensor, images: Tensor) -> None:
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"target boxes must be (N, 4) x0, y0, x1, y1, got {got}")
        if isinstance(images, Tensor) and boxes.shape[0] != images.shape[0]:
            raise ValueError(
                f"one target box per image: got {boxes.shape[0]} boxes for {images.shape[0]} images"
            )

    @staticmethod
    def _check_box_values(boxes: Tensor) -> None:
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError("target boxes contain NaN or infinity")
        if bool(((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any()):
            raise ValueError("target boxes must have x1 > x0 and y1 > y0 (positive area)")


def build_detector(cfg: DetectorConfig, weights: str | Path | None = None) -> RetinaNetDetector:
    """The detector a :class:`DetectorConfig` describes, untrained or with local ``weights``.

    ``weights``: a ``torch.save``'d state_dict, either of the whole detector (keys such as
    ``backbone.body.conv1.weight``) or of a torchvision ResNet alone (``conv1.weight``,
    ``layer1...``; ``fc.*`` is ignored and a 3-channel ``conv1`` is summed over its input
    channels, which gives the same response to a grey image replicated to RGB). Nothing is ever
    downloaded.
    """
    h, w = cfg.input_hw
    if h <= 0 or w <= 0:
        raise ValueError(f"input_hw must be positive, got {cfg.input_hw}")
    if len(cfg.anchor_sizes) != len(FPN_LEVELS):
        raise ValueError(
            f"anchor_sizes needs one size per FPN level P3..P7 ({len(FPN_LEVELS)}), "
            f"got {cfg.anchor_sizes}"
        )
    if cfg.head_convs < 0:
        raise ValueError(f"head_convs must be >= 0, got {cfg.head_convs}")
    generator = anchor_generator(cfg.anchor_sizes, cfg.anchor_scales, cfg.aspect_ratios)
    per_location = generator.num_anchors_per_location()[0]
    anchors = anchors_for_grids(
        generator, feature_grid_sizes(cfg.input_hw), [2**level for level in FPN_LEVELS]
    )
    backbone = build_backbone(cfg.backbone, cfg.fpn_channels)
    model = RetinaNetDetector(
        backbone,
        ClassificationHead(cfg.fpn_channels, per_location, 1, cfg.head_convs),
        RegressionHead(cfg.fpn_channels, per_location, cfg.head_convs),
        anchors,
        cfg.input_hw,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        matcher=default_matcher(cfg.fg_iou, cfg.bg_iou),
        box_loss=cfg.box_loss,  # type: ignore[arg-type]  # checked by the constructor
        top_k=cfg.top_k,
        presence_head=PresenceHead(cfg.fpn_channels, len(FPN_LEVELS)) if cfg.presence_head else None,
    )
    if weights is not None:
        load_detector_weights(model, weights)
    return model


def read_state_dict(path: str | Path, what: str = "detector weights file") -> dict[str, Tensor]:
    """A ``torch.save``'d state_dict file, read with ``weights_only=True`` (no pickled code runs).
    A file that needs more than tensors and plain types is refused with one line (ValueError),
    never loaded with ``weights_only=False``: that would run whatever code the file holds. A path
    that is no readable file is refused naming ``what`` (the option) and what the path is (a
    folder, a FIFO, a link loop: they were all "not found")."""
    from bpedge.train.checkpoint import torch_load_weights_only

    from bpedge._regular_file import refuse_unless_file

    path = Path(path)
    refuse_unless_file(path, what)
    state = torch_load_weights_only(path, "state_dict file")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} is not a state_dict (a mapping of names to tensors)")
    # Weights of NaN or Infinity trained into "training loss became nan ... lower --lr" (exit 1,
    # blaming the rate): refused here, naming the file, before any work.
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if broken:
        raise ValueError(f"{path} holds values that are not finite numbers (NaN or Infinity) in "
                         f"{len(broken)} tensor(s), e.g. {broken[0]!r}: not usable weights")
    return dict(state)


def load_detector_weights(model: RetinaNetDetector, path: str | Path) -> None:
    """Load a whole-detector or a backbone-only state_dict file into ``model`` (see build_detector)."""
    path = Path(path)
    state = read_state_dict(path)
    own_prefixes = tuple(f"{name}." for name, _ in model.named_children())
    try:
        if any(k.startswith(own_prefixes) for k in state):
            model.load_state_dict(state, strict=True)
        else:
            _load_backbone_state(model.backbone.get_submodule("body"), dict(state), path)
    except RuntimeError as exc:  # load_state_dict's report of missing keys or shape mismatches
        # torch's report runs over several lines (the CLI prints errors as one).
        report = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ValueError(
            f"{path} does not fit this detector (another backbone or preset?): {report}"
        ) from None


def _load_backbone_state(body: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 3:
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = body.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} matches neither the detector nor its backbone: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
