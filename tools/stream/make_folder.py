#!/usr/bin/env python3
"""A generated ImageNet-layout folder for trying `hpff train --stream`:
OUT/{train,val}/<class>/*.JPEG with images of varied sizes (default 2000 training and
200 validation images in 10 classes, sides 50..400 px). Each class has its own colour
and stripe direction, so a network can learn something. Needs numpy and Pillow.

    python3 tools/stream/make_folder.py /tmp/stream-folder [--train 2000 --val 200 --classes 10]
"""
import argparse
import os

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--min-side", type=int, default=50)
    ap.add_argument("--max-side", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    for split, n in (("train", a.train), ("val", a.val)):
        for k in range(n):
            c = k % a.classes
            d = os.path.join(a.out, split, f"n{c:08d}")
            os.makedirs(d, exist_ok=True)
            w, h = rng.integers(a.min_side, a.max_side + 1, size=2)
            y, x = np.mgrid[0:h, 0:w].astype(np.float32)
            angle = np.pi * c / a.classes
            stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) / (4 + c))
            base = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256], np.float32)
            img = base + 60 * stripes[..., None] + rng.normal(0, 20, (h, w, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            Image.fromarray(img, "RGB").save(os.path.join(d, f"{split}_{k:06d}.JPEG"), quality=85)
    print(f"wrote {a.train} training and {a.val} validation JPEGs in {a.classes} classes under {a.out}")


if __name__ == "__main__":
    main()
