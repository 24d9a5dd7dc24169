"""The ONNX file's contract, importable without torch (``thawline --help`` stays fast)."""

OPSET = 18  # Resize with antialiasing needs 18; onnxruntime 1.20+ runs it
TOLERANCE = 1e-4  # max abs difference of probabilities to PyTorch, fp32
LAYOUTS = ("nhwc", "nchw")  # image input: uint8 [N, S, S, 3] or [N, 3, S, S]
TOKENIZER_SUFFIX = ".tokenizer"  # model.onnx -> model.tokenizer/ (text models)
