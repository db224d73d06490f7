"""segkd export stage: checkpoint -> ONNX (fp32 / fp16 / INT8 Q/DQ) -> TensorRT engines.

Entry point: `export.api.export_checkpoint`. Precision lives in the ONNX files (an FP16
graph, explicit Q/DQ nodes) so strongly typed TensorRT 10.x and 11.x build them alike.
"""
