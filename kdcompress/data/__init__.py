"""The data stage: dataset specs -> DataSplits (core.splits), one class-naming rule for every reader.

Specs: `digits`, `synthetic:...` (specs.py) and the file datasets of files.py (`imagefolder:`, `csv:`,
`cifar10:`, `cifar100:`, `mnist:`, `fashionmnist:`), whose splits may decode per batch (imagesplits.py).
"""

from .specs import DATASETS, align_classes, is_index_names, load_data, parse_spec

__all__ = ["DATASETS", "align_classes", "is_index_names", "load_data", "parse_spec"]
