#!/usr/bin/env python3
"""Loads an hpff checkpoint's model tensors into torchvision's network of the same
architecture, strictly: every key torchvision's model has must be in the checkpoint
(BatchNorm's `num_batches_tracked` counters aside, which hpff does not keep), and the
checkpoint may hold no model tensor torchvision lacks (the optimizer's momentum and a
local method's auxiliary nets are set aside and counted). Shapes must match. Then one
forward pass in eval mode on a seeded batch must give finite logits.

    python3 tools/checkpoint/torchvision_load.py RUN_DIR   # arch and shape from checkpoint.json
    python3 tools/checkpoint/torchvision_load.py FILE.safetensors --arch resnext50-32x4d-imagenet --classes 10

Exit status 0 when it loads, 1 with the keys that differ otherwise.
"""
import argparse
import json
import os
import re
import sys

import torch
import torchvision
from safetensors.torch import load_file

MOMENTUM_PREFIX = "optimizer.momentum."


def torchvision_name(arch):
    """hpff's --arch name -> torchvision's constructor name."""
    a = arch.strip().lower()
    m = re.fullmatch(r"resnet(\d+)-imagenet", a)
    if m:
        return f"resnet{m.group(1)}"
    m = re.fullmatch(r"resnext(\d+)-(\d+)x(\d+)d-imagenet", a)
    if m:
        return f"resnext{m.group(1)}_{m.group(2)}x{m.group(3)}d"
    sys.exit(f"torchvision_load: {arch!r} has no torchvision counterpart (ImageNet-family names only)")


def resolve(path):
    """A run directory, its checkpoint.json, or a .safetensors file -> (tensor file,
    checkpoint.json's contents or None)."""
    if path.endswith(".safetensors"):
        return path, None
    meta = path if path.endswith(".json") else os.path.join(path, "checkpoint.json")
    with open(meta) as f:
        info = json.load(f)
    return os.path.join(os.path.dirname(meta), info["tensors"]["file"]), info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="run directory, checkpoint.json or .safetensors")
    ap.add_argument("--arch", help="hpff --arch name, e.g. resnext50-32x4d-imagenet [from checkpoint.json]")
    ap.add_argument("--classes", type=int, help="[from checkpoint.json]")
    ap.add_argument("--image-size", type=int, help="[from checkpoint.json, else 64]")
    ap.add_argument("--in-channels", type=int, help="[from checkpoint.json, else 3]")
    args = ap.parse_args()

    path, info = resolve(args.checkpoint)
    if info is not None:
        args.arch = args.arch or info["config"]["arch"]
        args.classes = args.classes or info["shape"]["classes"]
        args.image_size = args.image_size or info["shape"]["image"]
        args.in_channels = args.in_channels or info["shape"]["c"]
    if args.arch is None or args.classes is None:
        sys.exit("torchvision_load: give --arch and --classes with a bare .safetensors file")
    args.image_size, args.in_channels = args.image_size or 64, args.in_channels or 3
    tensors = load_file(path)
    model = getattr(torchvision.models, torchvision_name(args.arch))(weights=None, num_classes=args.classes)
    if args.in_channels != 3:
        model.conv1 = torch.nn.Conv2d(args.in_channels, model.conv1.out_channels, 7, 2, 3, bias=False)
    want = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    momentum = {k for k in tensors if k.startswith(MOMENTUM_PREFIX)}
    model_like = {k for k in tensors if k not in momentum}
    missing = sorted(want - model_like)
    extra = sorted(model_like - want)
    # Auxiliary nets of a local method (aux*, decoder*, net_classifier*, …) are not
    # torchvision's; anything else extra is a naming error.
    aux = [k for k in extra if not k.split(".")[0] in ("conv1", "bn1", "fc") and not k.startswith("layer")]
    unexpected = [k for k in extra if k not in aux]
    if missing or unexpected:
        print(f"torchvision_load: {len(missing)} missing, {len(unexpected)} unexpected keys")
        for k in missing[:20]:
            print(f"  missing    {k}")
        for k in unexpected[:20]:
            print(f"  unexpected {k}")
        return 1
    state = {k: tensors[k] for k in want}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape mismatch
        print(f"torchvision_load: {' '.join(str(e).split())[:400]}")
        return 1
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, args.in_channels, args.image_size, args.image_size, generator=g)
    with torch.no_grad():
        logits = model(x)
    if not torch.isfinite(logits).all():
        print("torchvision_load: non-finite logits")
        return 1
    params = sum(t.numel() for t in state.values())
    print(
        f"torchvision_load: {torchvision_name(args.arch)} loaded {len(state)} tensors ({params} values), "
        f"no missing or unexpected key; set aside {len(momentum)} momentum and {len(aux)} auxiliary-net tensors; "
        f"logits {tuple(logits.shape)} finite"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
