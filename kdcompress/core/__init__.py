"""The leaf every layer may import and that imports nothing else of kdcompress: shared types (spec, types,
splits), typed dataclass building (build), configuration (config), the checkpoint format, errors, the registry,
atomic run-directory I/O (runio), system facts (system), file guards (fsguard), the on-disk JSON store
(jsonstore) and batch inference (infer). ONNX Runtime sessions, latency and ONNX I/O are the runtime layer's."""
