"""Module-parallel training (--pipeline) against one process and data parallelism, hpff only.

Per configuration, interleaved round by round, each measurement in its own processes:

  one        `hpff bench --json --threads 1` (one process, one core)
  data       `mpirun -np N hpff bench --json --threads 1`: N data-parallel processes
  pipeline   `mpirun -np N hpff bench --json --threads 1 --pipeline`: N stages, split by
             each module's step time measured at the start (the default --balance time)
  flops      the same with --balance flops (split by the plan's FLOP counts)

Prints the median images/s of each, the speed-up of N processes over one, and for the
pipeline each stage's share of a step spent waiting for its neighbours, and that share on
its busiest stage (the most compute per step): in a pipeline whose stages never held each
other up the busiest stage would never wait, so this is what the coupling costs. For HPFF
it includes waiting for the cascade gradient that comes down at each stage boundary.
PyTorch has no counterpart of the pipeline, so nothing here runs it. Build first:

    cargo build --release -p hpff --features mpi
    python3 tools/bench/pipeline.py --np 2 --batch 128 --steps 6 --rounds 2

Nothing here is run by `.ci/run`.
"""

import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

CONFIGS = {
    "dgl-k16": ["--method", "dgl", "--k", "16"],
    "infopro-k16": ["--method", "infopro", "--k", "16"],
    "infopro-hpff-k16": ["--method", "infopro", "--hpff", "--k", "16"],
}


def bench(binary, args, np, pipeline):
    cmd = [binary, "bench", "--json", "--threads", "1"] + args + pipeline
    if np > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np)] + cmd
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.strip()][-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hpff-bin", default=os.path.join(ROOT, "target", "release", "hpff"))
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    a = p.parse_args()
    names = a.configs.split(",")
    modes = (("one", 1, []), ("data", a.np, []), ("pipeline", a.np, ["--pipeline"]),
             ("flops", a.np, ["--pipeline", "--balance", "flops"]))
    res = {(n, m[0]): [] for n in names for m in modes}
    waits = {n: [] for n in names}
    bottleneck = {n: [] for n in names}
    for r in range(a.rounds):
        for n in names:
            args = ["--arch", "resnet32", "--batch-size", str(a.batch), "--steps", str(a.steps),
                    "--warmup", str(a.warmup)] + CONFIGS[n]
            for m, np, pipe in modes:
                j = bench(a.hpff_bin, args, np, pipe)
                res[(n, m)].append(j["train_images_per_s_median"])
                if m == "pipeline":
                    waits[n].append([(s["modules"], s["wait_share"]) for s in j["pipeline"]])
                    # The stage with the most work: a pipeline whose stages never held each
                    # other up would keep it busy; what it waits is what the coupling costs.
                    busiest = max(j["pipeline"], key=lambda s: s["train_step_s"] - s["wait_s_per_step"])
                    bottleneck[n].append(busiest["wait_share"])
                print(f"round {r} {n} {m}: {j['train_images_per_s_median']:.1f} img/s", flush=True)
    print(f"\nmedian images/s (ResNet-32, batch {a.batch}, {a.np} processes of 1 thread each)")
    print("| config | one process | data-parallel | pipeline (time-balanced) | pipeline (FLOP-balanced) "
          "| data / one | pipeline / one | busiest stage waits | time-balanced stages, last round (modules: waiting share) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        one, dp, pl, fl = (statistics.median(res[(n, m[0])]) for m in modes)
        w = waits[n][-1]
        stages = ", ".join(f"{m[0]}..={m[1]}: {100 * s:.0f}%" for m, s in w)
        bw = 100 * statistics.median(bottleneck[n])
        print(f"| {n} | {one:.1f} | {dp:.1f} | {pl:.1f} | {fl:.1f} | {dp / one:.2f}× | {pl / one:.2f}× | {bw:.1f}% | {stages} |")


if __name__ == "__main__":
    main()
