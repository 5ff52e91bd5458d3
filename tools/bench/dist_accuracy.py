"""Validation accuracy of one process against `mpirun -np 2` and `-np 3`, every method, several seeds.

Each run: CIFAR-10 JPEG folder, 20,000 training images (`--limit-train`), 5,000 held
out for validation (`--val-split`; the seed draws the split, the same for every process
count), ResNet-8, K = 3, 2 epochs, global batch 96, lr 0.1. One process runs 2 threads;
the jobs run one thread per process with `--sync-bn` (BN over the global batch, as in one
process). Prints a Markdown table of the final validation accuracies, their means over
the seeds, and the mean differences to one process. Runs whose folder already holds a
summary.json are not run again, so an interrupted sweep resumes.

    cargo build --release -p hpff --features mpi
    python3 tools/bench/dist_accuracy.py --hpff-bin target/release/hpff \\
        --data ../shared/data/cifar10-jpg/train --out /tmp/dist-acc --seeds 0 1 2

Nothing here is run by `.ci/run`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

METHODS = {
    "e2e": ("e2e", ["--method", "e2e"]),
    "greedy": ("Greedy SL", ["--method", "greedy", "--k", "3"]),
    "dgl": ("DGL", ["--method", "dgl", "--k", "3"]),
    "infopro": ("InfoPro", ["--method", "infopro", "--no-hpff", "--k", "3"]),
    "hpff": ("InfoPro + HPFF", ["--method", "infopro", "--hpff", "--k", "3"]),
}
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]


def run(args, key, np_, seed):
    out = os.path.join(args.out, f"{key}-np{np_}-s{seed}")
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary):
        cmd = [args.hpff_bin, "train", "--dataset", "folder", "--data-dir", args.data, "--arch", "resnet8",
               "--epochs", "2", "--batch-size", "96", "--lr", "0.1", "--limit-train", "20000",
               "--val-split", "5000", "--seed", str(seed), "--out", out] + METHODS[key][1]
        if np_ == 1:
            cmd += ["--threads", "2"]
        else:
            cmd = MPIRUN + ["-np", str(np_)] + cmd + ["--threads", "1", "--sync-bn"]
        env = dict(os.environ, OMPI_MCA_btl_vader_single_copy_mechanism="none")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines()
            why = next((ln for ln in lines if ln.startswith("hpff: error")), lines[-1] if lines else "")
            sys.exit(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {why}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        last = json.loads(f.read().strip().splitlines()[-1])
    return 100.0 * last["eval_accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hpff-bin", required=True)
    ap.add_argument("--data", required=True, help="the CIFAR-10 JPEG training folder")
    ap.add_argument("--out", required=True, help="a folder for the runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    acc = {}
    for seed in args.seeds:
        for key in args.methods:
            for np_ in (1, 2, 3):
                acc[key, np_, seed] = run(args, key, np_, seed)
                print(f"{key} np={np_} seed={seed}: {acc[key, np_, seed]:.2f}%", file=sys.stderr)
    seeds = ", ".join(map(str, args.seeds))
    print(f"| | 1 process (seeds {seeds}) | 2 processes | 3 processes | mean, 1 / 2 / 3 | mean 2 − 1, 3 − 1 |")
    print("|---|---|---|---|---|---|")
    for key in args.methods:
        cells = [[acc[key, np_, s] for s in args.seeds] for np_ in (1, 2, 3)]
        m = [statistics.mean(c) for c in cells]
        text = [", ".join(f"{a:.2f}" for a in c) for c in cells]
        print(f"| {METHODS[key][0]} | {text[0]} | {text[1]} | {text[2]} | "
              f"{m[0]:.2f} / {m[1]:.2f} / {m[2]:.2f} | {m[1] - m[0]:+.2f}, {m[2] - m[0]:+.2f} |")


if __name__ == "__main__":
    main()
