"""Training-step throughput of hpff against PyTorch (CPU), same configuration, same
machine, same thread count, in one run; prints both and the ratio.

The PyTorch side is the model of tools/golden/make_golden.py (the reference forward of
every method, checked against the reference code), on CIFAR-shaped random data; the hpff
side is `hpff bench --json`. Build hpff first: `cargo build --release -p hpff`.

    python3 tools/bench/compare_torch.py --arch resnet32 --method infopro --hpff --k 4 \
        --batch 128 --threads 2 --steps 5
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))


def hpff_json(args, cmd):
    exe = os.path.join(ROOT, "target", "release", "hpff")
    base = [exe, cmd, "--dataset", "cifar10", "--arch", args.arch, "--method", args.method, "--k", str(args.k),
            "--batch-size", str(args.batch)]
    if args.hpff:
        base.append("--hpff")
    if cmd == "bench":
        base += ["--threads", str(args.threads), "--steps", str(args.steps)]
    return json.loads(subprocess.run(base + ["--json"], check=True, capture_output=True, text=True).stdout)


def torch_images_per_s(args, plan):
    import torch
    import make_golden as mg

    torch.set_num_threads(args.threads)
    depth = int(args.arch.removeprefix("resnet"))
    blocks = (depth - 2) // 6
    cfg = dict(mg.BASE)
    cfg.update(method=args.method, hpff=args.hpff, patches=plan["patches"], aux_head=plan["aux_classifier"],
               feature_dim=128, lambda1=[5.0, 0.0], lambda2=[0.5, 0.0], wx=0.001, wy=0.999,
               splits=[m["split"] for m in plan["per_module"]], k_label=plan["k_label"], image_size=32,
               batch=args.batch, classes=10)
    if args.method == "e2e":
        cfg["splits"] = [[3, blocks - 1]]
    torch.manual_seed(0)
    net = mg.LocalNet(cfg, blocks=(blocks, blocks, blocks))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    img = torch.rand(args.batch, 3, 32, 32)
    target = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        mg.train_step(net, cfg, img, target)
        opt.step()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch * args.steps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet32")
    ap.add_argument("--method", default="infopro", choices=["e2e", "greedy", "dgl", "infopro"])
    ap.add_argument("--hpff", action="store_true")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    plan = hpff_json(args, "plan")
    ours = hpff_json(args, "bench")["train_images_per_s"]
    theirs = torch_images_per_s(args, plan)
    label = f"{args.arch} {args.method}{'+hpff' if args.hpff else ''} K={args.k} batch {args.batch}, {args.threads} threads"
    print(json.dumps({"config": label, "hpff_images_per_s": round(ours, 1), "torch_images_per_s": round(theirs, 1),
                      "hpff_over_torch": round(ours / theirs, 3)}))


if __name__ == "__main__":
    main()
