"""The export stage: fp32 ONNX (runtime.onnxio's conversion) plus fp16/int8 variants, each checked against
PyTorch at batch 1 and 7."""

from .onnx import (
           CHECK_BATCHES,
           DEFAULT_CALIB,
           ExportOptions,
           OnnxArtifact,
           VariantBuild,
           build_units,
           build_variants,
           calibration_images,
           export_onnx,
           export_variants,
           variant_path,
)
from .variants import timing_variant

__all__ = ["CHECK_BATCHES", "DEFAULT_CALIB", "ExportOptions", "OnnxArtifact", "calibration_images", "export_onnx",
           "VariantBuild", "build_units", "build_variants", "export_variants", "timing_variant", "variant_path"]
