"""The leaf every stage may import and that imports no stage: shared types (spec, types, splits), typed
dataclass building (build), configuration (config), the checkpoint format, errors, the registry, atomic
run-directory I/O (runio), system facts (system), the ONNX conversion and metadata (onnxio), the ORT
session factory and latency harness (ortbench), and batch inference (infer)."""
