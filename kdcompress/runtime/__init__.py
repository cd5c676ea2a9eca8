"""The runtime layer, beneath the stages and above core: ONNX Runtime sessions and the one latency harness
(ortbench), latency drawn in fresh processes (freshbench), latency tables measured on the target
(latencytable), and the torch -> ONNX conversion with its metadata (onnxio).

Nothing is imported here: `kdcompress profile` and freshbench's child processes import ortbench,
freshbench and latencytable with onnxruntime and numpy alone (no torch); onnxio imports torch."""
