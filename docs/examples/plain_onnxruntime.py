"""Classify an ImageFolder-style directory with a kdcompress ONNX file and nothing but onnxruntime, numpy and
Pillow: every preprocessing step comes from the file's own metadata (`preprocess`, `mean`, `std`,
`input_shape`, `classes`). Prints one JSON object: the accuracy over the images of CLASS/ subfolders and the
confusion counts (rows: true class, columns: predicted, in the order of `classes`).

    python docs/examples/plain_onnxruntime.py runs/NAME/student.onnx path/to/test
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_image(path: Path, meta: dict) -> np.ndarray:
    c, h, w = json.loads(meta["input_shape"])
    pre = json.loads(meta["preprocess"])
    with Image.open(path) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: value / 257, rounded
            im = Image.fromarray(np.rint(np.clip(np.asarray(im, np.float64), 0, 65535) / 257).astype(np.uint8))
        im = im.convert(pre["color"])
        scale = max(h / im.height, w / im.width)  # "cover": the smallest aspect-preserving size covering (h, w)
        nh, nw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
        if (nh, nw) != (im.height, im.width):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        top, left = (nh - h) // 2, (nw - w) // 2  # centre crop
        im = im.crop((left, top, left + w, top + h))
        x = np.asarray(im, dtype=np.float32) / 255.0
    x = x[None] if c == 1 else x.transpose(2, 0, 1)  # HWC -> CHW
    mean = np.array(json.loads(meta["mean"]), np.float32)[:, None, None]
    std = np.array(json.loads(meta["std"]), np.float32)[:, None, None]
    return (x - mean) / std


def main(onnx_path: str, folder: str) -> None:
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"])
    name = sess.get_inputs()[0].name
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for label_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        for path in sorted(label_dir.iterdir()):
            logits = sess.run(None, {name: load_image(path, meta)[None].astype(np.float32)})[0]
            confusion[classes.index(label_dir.name), int(logits.argmax())] += 1
    total = int(confusion.sum())
    print(json.dumps({"images": total, "accuracy": np.trace(confusion) / total, "confusion": confusion.tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
