#!/usr/bin/env python3
"""Fixture for hpff's ImageNet transforms (host/src/data/transform.rs), made with torchvision.

Writes host/tests/fixtures/imagenet_transforms.safetensors: generated RGB images (u8 HWC),
and for each case torchvision's output on the tensor path (float image, antialias=True,
normalized with the ImageNet mean and std: `<case>.tensor`, f32 CHW) and on the PIL path
(what torchvision's ImageFolder pipeline runs: `<case>.pil`, PIL's u8 HWC output, which
ToTensor + Normalize turn into the pipeline's values). The random crop's box and flip are given (hpff samples them with its own RNG), so
what is compared is torchvision's `resized_crop` + `hflip`, and `Resize(size*256//224)` +
`CenterCrop(size)` for evaluation. One case goes through a JPEG written here, decoded by
PIL (libjpeg) in the fixture and by the `image` crate in the test.

    python3 -m venv --system-site-packages /tmp/tv && /tmp/tv/bin/pip install torchvision pillow
    /tmp/tv/bin/python tools/transforms/make_fixture.py [--out FILE]

Made with torch 2.15, torchvision 0.29.2, Pillow 13.0.
"""
import argparse
import io
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def image(h, w, seed):
    """Smooth gradients, a few edges and noise: something a resampler can get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / (3 + seed) + y / 7)
    g = 255 * (x / max(w - 1, 1)) * (y / max(h - 1, 1))
    b = np.where(((x // 5) + (y // 3)) % 2 == 0, 200, 40).astype(np.float64)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def finish(t):
    """[0, 1] CHW float -> normalized."""
    return F.normalize(t, MEAN, STD).contiguous()


def rrc_tensor(img, box, flip, out):
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    o = F.resized_crop(t, *box, [out, out], InterpolationMode.BILINEAR, antialias=True)
    if flip:
        o = F.hflip(o)
    return finish(o)


def pil_bytes(o):
    """PIL's u8 output, HWC (ToTensor + Normalize of it is the pipeline's value)."""
    return torch.from_numpy(np.asarray(o.convert("RGB")).copy())


def rrc_pil(pil, box, flip, out):
    o = F.resized_crop(pil, *box, [out, out], InterpolationMode.BILINEAR)
    if flip:
        o = F.hflip(o)
    return pil_bytes(o)


def eval_tensor(img, out):
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    o = F.center_crop(F.resize(t, out * 256 // 224, InterpolationMode.BILINEAR, antialias=True), out)
    return finish(o)


def eval_pil(pil, out):
    o = F.center_crop(F.resize(pil, out * 256 // 224, InterpolationMode.BILINEAR), out)
    return pil_bytes(o)


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "../../host/tests/fixtures/imagenet_transforms.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tensors, cases = {}, []
    # (h, w, box (i, j, h, w) or None for eval, flip, out size)
    specs = [
        (60, 90, (5, 10, 40, 50), False, 32),  # downscale, non-square box
        (60, 90, (5, 10, 40, 50), True, 32),  # the same, flipped
        (50, 70, (0, 0, 50, 70), False, 64),  # whole image, upscale in both axes
        (45, 33, (3, 2, 12, 20), True, 48),  # strong upscale
        (120, 80, (10, 7, 101, 66), False, 17),  # odd factors
        (300, 200, (20, 30, 250, 160), False, 96),  # large downscale
        (300, 200, None, False, 224),  # eval at 224: resize 256, centre crop
        (57, 41, None, False, 32),  # eval, small: resize 36, odd offsets
        (40, 100, None, False, 48),  # eval, wide image, upscale
    ]
    for k, (h, w, box, flip, out) in enumerate(specs):
        img = image(h, w, k)
        pil = Image.fromarray(img, "RGB")
        name = f"case{k}"
        tensors[f"{name}.image"] = torch.from_numpy(img.copy())
        if box is None:
            if out <= 64:  # the f32 output at 224 would make the file 4x larger
                tensors[f"{name}.tensor"] = eval_tensor(img, out)
            tensors[f"{name}.pil"] = eval_pil(pil, out)
        else:
            tensors[f"{name}.tensor"] = rrc_tensor(img, box, flip, out)
            tensors[f"{name}.pil"] = rrc_pil(pil, box, flip, out)
        cases.append({"name": name, "h": h, "w": w, "box": box, "flip": flip, "out": out})
    # A JPEG: the test decodes these bytes with the `image` crate; the fixture's outputs
    # come from PIL's decode.
    img = image(150, 110, 42)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=90)
    pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    tensors["jpeg.bytes"] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).clone()
    tensors["jpeg.decoded"] = torch.from_numpy(np.asarray(pil).copy())
    tensors["jpeg.rrc"] = rrc_pil(pil, (12, 9, 100, 80), True, 64)
    tensors["jpeg.eval"] = eval_pil(pil, 64)
    meta = {"cases": json.dumps(cases), "jpeg": json.dumps({"h": 150, "w": 110, "box": [12, 9, 100, 80], "flip": True, "out": 64})}
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata=meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(cases)} cases + jpeg)")


if __name__ == "__main__":
    main()
