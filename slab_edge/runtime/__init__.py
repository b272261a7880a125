"""Torch-free on-device runtime: sessions for ONNX Runtime and TensorRT, preprocessing, infer/bench/generate.

Imports only numpy, PIL and the chosen backend (lazily).
"""
