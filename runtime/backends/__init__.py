"""Inference backends. Each one imports its engine (onnxruntime, tensorrt, torch) lazily."""
