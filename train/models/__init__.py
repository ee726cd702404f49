"""Models of the method: RetinaNet detector, U-Net and M-Net segmenters."""

from ._segmenter import build_segmenter
from .complexity import model_complexity
from .mnet import MNet
from .retinanet import RetinaNetDetector, build_detector, load_detector_weights
from .unet import UNet

__all__ = [
    "MNet",
    "RetinaNetDetector",
    "UNet",
    "build_detector",
    "build_segmenter",
    "load_detector_weights",
    "model_complexity",
]
