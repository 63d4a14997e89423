#!/usr/bin/env python3
"""Reference figures for dreamd's similarity metrics (src/direction/similarity.rs).

Computes, exactly as the original Dream Window did (its backend/utils/color_encoder.py and
phash_encoder.py), the 96-bin HSV histogram and imagehash's pHash-8 of every picture in a folder,
and prints each picture's pHash and its colour/structure similarity to the first picture.

    python3 -m venv venv && venv/bin/pip install pillow imagehash numpy scipy
    venv/bin/python tools/similarity_ref.py ../shared/images
"""
import sys
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image


def histogram(img):
    hsv = np.asarray(img.convert("RGB").convert("HSV"))
    parts = []
    for c in range(3):
        h, _ = np.histogram(hsv[:, :, c], bins=32, range=(0, 256))
        h = h.astype(np.float32)
        parts.append(h / h.sum())
    return np.concatenate(parts)


def main(folder):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))
    rows = []
    for p in files:
        img = Image.open(p)
        rows.append((p.name, histogram(img), imagehash.phash(img.convert("RGB"), hash_size=8)))
    first_hist, first_hash = rows[0][1], rows[0][2]
    for name, hist, ph in rows:
        color = float(np.minimum(first_hist, hist).sum())
        struct = 1.0 - (first_hash - ph) / 64.0
        print(f'("{name}", "{ph}", {color:.5f}),  // structure to first {struct:.5f}')


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/images")
