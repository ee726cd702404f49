"""Export: ONNX, FP16 ONNX, TensorRT engine building and the bundle manifest."""
