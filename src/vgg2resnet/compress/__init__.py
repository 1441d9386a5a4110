"""ONNX export and int8 post-training quantization of the student."""
