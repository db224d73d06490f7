"""Every stage's options, declared once (core.options.Option): one module per stage.

train, distill, qat (training machine), export, tolerances, tensorrt, evaluate, bench and
demo. Plain data without torch, so the runtime commands read theirs on a Jetson.
"""
