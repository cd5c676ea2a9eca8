"""The data stage: dataset specs -> DataSplits (core.splits), one class-naming rule for every reader
(core.classes: names are strings; all-integer names sort by value, others as strings; map by name).

Specs: `digits`, `synthetic:...` (specs.py) and the file datasets of files.py (`imagefolder:`, `csv:`,
`cifar10:`, `cifar100:`, `mnist:`, `fashionmnist:`), whose splits may decode per batch (imagesplits.py).
"""

from ..core.classes import class_order, is_index_names
from .imagesplits import decode
from .specs import DATASETS, align_classes, load_data, native_shape, parse_spec

__all__ = ["DATASETS", "align_classes", "class_order", "decode", "is_index_names", "load_data", "native_shape",
           "parse_spec"]
