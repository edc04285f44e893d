"""Regenerate data/digits/ (raw PNG files + labels.csv) from scikit-learn's copy of UCI digits.

Run once by a maintainer; the output is committed. Usage:
    python scripts/make_digits_raw.py path/to/sklearn/datasets/data/digits.csv.gz
"""
from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "data" / "digits"


def main(digits_csv_gz: str) -> None:
    with gzip.open(digits_csv_gz, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = rows[:, :64], rows[:, 64]
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    with open(OUT / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for i, (row, label) in enumerate(zip(pixels, labels)):
            # 0..16 counts of "on" pixels in 4x4 blocks -> 0..255 grey, exactly invertible.
            grey = np.round(row.reshape(8, 8) * 255 / 16).astype(np.uint8)
            name = f"images/digit_{i:04d}.png"
            Image.fromarray(grey, mode="L").save(OUT / name, optimize=True)
            writer.writerow([name, int(label)])
    print(f"wrote {len(labels)} images to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
