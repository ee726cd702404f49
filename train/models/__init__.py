"""Models of the method: RetinaNet detector, U-Net and M-Net segmenters."""
