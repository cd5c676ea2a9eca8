"""Fixed-seed short training with kdcompress's step engine (throughput.py's setup, both settings, kd, dkd, nd,
ickd): a digest of every step's loss and parts, exactly (float.hex). Run it against two checkouts and compare:

    PYTHONPATH=/tmp/before python benchmarks/step_identity.py > a.txt; python benchmarks/step_identity.py > b.txt
    diff <(grep digest a.txt) <(grep digest b.txt)
"""
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp

import kdcompress
print("kdcompress from", kdcompress.__file__)
for setting in ("small", "default"):
    tp.S = tp.SETTINGS[setting]
    split = tp.synthetic_split(256 if setting == "small" else 64)
    for m in tp.METHODS:
        step = tp.kdcompress_stepper(m, split, torch.device("cpu"), 32 if setting == "small" else 8, False)
        rows = []
        for _ in range(12 if setting == "small" else 4):
            loss, parts = step()
            rows.append(f"{float(loss).hex()} " + " ".join(f"{k}={float(v).hex()}" for k, v in sorted(parts.items())))
        print(setting, m, rows[0][:60], "...", rows[-1][:40], "digest",
              hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16])
