"""Data-parallel scaling of hpff on MPI against PyTorch DDP (gloo) on the same machine.

Per configuration, interleaved round by round, each measurement in its own processes:

  hpff-1      `hpff bench --json --threads 1` (one process)
  hpff-mpi    `mpirun -np N hpff bench --json --threads 1` (N processes, one core each;
              Open MPI binds each rank to a core); the whole job's images/s from rank 0
  torch-1     PyTorch eager, one process, one thread
              (--tcmalloc preloads tcmalloc into both PyTorch settings)
  torch-ddp   PyTorch, N processes of one thread each, pinned to a core each, gloo:
              e2e runs torch.nn.parallel.DistributedDataParallel (bucketed all-reduce
              overlapped with the backward); the local methods call backward once per
              module and part (DDP's reducer expects one backward per forward), so their
              gradients are averaged after the step's backward passes with one flat
              all-reduce, which is what DDP's buckets add up to without the overlap

The batch is the global one (each process steps batch / N). Prints median images/s, each
side's scaling (N processes over one) and hpff over PyTorch per setting. The model is
tools/golden/make_golden.py's (the reference's forward and backward of every method), as
in compare_torch.py; build hpff with MPI first:

    cargo build --release -p hpff --features mpi
    python3 tools/bench/ddp_torch.py --np 2 --batch 128 --steps 6 --rounds 2

Nothing here is run by `.ci/run`.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))

import compare_torch as ct  # noqa: E402  (the configuration parser and torch model setup)

CONFIGS = ["e2e", "infopro+hpff:k=16:aux=2c2f"]
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


def worker(args):
    """One PyTorch process of a (possibly one-process) data-parallel job."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import make_golden as mg

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        os.sched_setaffinity(0, {rank % os.cpu_count()})
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    spec = json.loads(args.spec)
    with open(args.plan_json) as f:
        plan = json.load(f)
    local = args.batch // world
    cfg = ct.torch_cfg(plan, spec, local)
    blocks = (int(spec["arch"].removeprefix("resnet")) - 2) // 6
    torch.manual_seed(0)
    net = mg.LocalNet(cfg, blocks=(blocks, blocks, blocks))
    gen = torch.Generator().manual_seed(1 + rank)
    img = torch.rand(local, 3, 32, 32, generator=gen)
    target = torch.randint(0, 10, (local,), generator=gen)
    net.train()
    params = [p for p in net.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    e2e = spec["method"] == "e2e"
    ddp = None
    if world > 1 and e2e:
        class Whole(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.n = n

            def forward(self, x):
                x = self.n.stem(x)
                for j in range(len(self.n.parts)):
                    x = self.n.run_part(j, x)
                return self.n.classify(x)

        ddp = torch.nn.parallel.DistributedDataParallel(Whole(net))

    def step():
        opt.zero_grad(set_to_none=False)
        if ddp is not None:
            F.cross_entropy(ddp(img), target).backward()
        else:
            mg.train_step(net, cfg, img, target)
            if world > 1:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                flat = torch.cat([p.grad.reshape(-1) for p in params])
                dist.all_reduce(flat)
                flat /= world
                o = 0
                for p in params:
                    p.grad.copy_(flat[o:o + p.numel()].view_as(p))
                    o += p.numel()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if world > 1:
            dist.barrier()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if world > 1:
        # The job's step is its slowest rank's.
        tt = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(tt, op=dist.ReduceOp.MAX)
        times = tt.tolist()
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(dict(median_s=statistics.median(times), images_per_s=args.batch / statistics.median(times))),
              flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch(args, spec, plan_file, world):
    """Images/s of one PyTorch measurement; a failed multi-process start (gloo has been
    seen to end a rank with `terminate called without an active exception`, now and then,
    on this machine) is tried once more, saying so."""
    try:
        return run_torch_once(args, spec, plan_file, world)
    except ct.HarnessError as e:
        if world == 1:
            raise
        print(f"  (retrying: {e})", file=sys.stderr, flush=True)
        return run_torch_once(args, spec, plan_file, world)


def run_torch_once(args, spec, plan_file, world):
    cmd = [sys.executable, __file__, "--worker", "--spec", json.dumps(spec), "--plan-json", plan_file,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1")
    if args.tcmalloc:
        env["LD_PRELOAD"] = ct.TCMALLOC
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    if any(p.returncode for p in procs):
        tails = [f"rank {r} (exit {p.returncode}): " + " / ".join((e or "").strip().splitlines()[-6:])
                 for r, (p, (_, e)) in enumerate(zip(procs, outs))]
        raise ct.HarnessError(f"torch world {world}: " + " | ".join(tails))
    return json.loads(ct.last_line(outs[0][0]))["images_per_s"]


def run_hpff(args, spec, world):
    cmd = [args.hpff_bin, "bench"] + ct.hpff_model_flags(spec, args.batch) + [
        "--threads", "1", "--steps", str(args.steps), "--warmup", str(args.warmup), "--json"]
    if world > 1:
        cmd = MPIRUN + ["-np", str(world)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode != 0:
        raise ct.HarnessError(f"`{' '.join(cmd)}`: {ct.error_line(r.stderr)}")
    j = json.loads(ct.last_line(r.stdout))
    return j["train_images_per_s_median"], j.get("allreduce_share")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arch", default="resnet32")
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--hpff-bin", default=os.path.join(ROOT, "target", "release", "hpff"))
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--tcmalloc", action="store_true", help="preload tcmalloc into the PyTorch processes "
                    "(Debian: libtcmalloc-minimal4), which makes PyTorch faster on CPU")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--plan-json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    results = {}
    plan_args = argparse.Namespace(hpff_bin=args.hpff_bin, batch=args.batch)
    for text in args.configs:
        spec = ct.parse_spec(text, args.arch)
        plan_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ddp-plan-{os.getpid()}-{len(results)}.json")
        with open(plan_file, "w") as f:
            json.dump(ct.hpff_plan(plan_args, spec), f)
        r = results.setdefault(text, {k: [] for k in ("hpff-1", "hpff-mpi", "torch-1", "torch-ddp", "share")})
        for _ in range(args.rounds):
            r["hpff-1"].append(run_hpff(args, spec, 1)[0])
            ips, share = run_hpff(args, spec, args.np)
            r["hpff-mpi"].append(ips)
            r["share"].append(share)
            r["torch-1"].append(run_torch(args, spec, plan_file, 1))
            r["torch-ddp"].append(run_torch(args, spec, plan_file, args.np))
        os.unlink(plan_file)
        med = {k: statistics.median(v) for k, v in r.items() if k != "share"}
        print(f"{text} ({args.arch}, batch {args.batch}, {args.np} processes x 1 thread), median images/s over "
              f"{args.rounds} rounds:")
        print(f"  hpff  1 process {med['hpff-1']:.1f}  {args.np} processes {med['hpff-mpi']:.1f}  "
              f"scaling {med['hpff-mpi'] / med['hpff-1']:.2f}x  (all-reduce {100 * statistics.median(r['share']):.1f}% "
              f"of a step)")
        print(f"  torch 1 process {med['torch-1']:.1f}  {args.np} processes {med['torch-ddp']:.1f}  "
              f"scaling {med['torch-ddp'] / med['torch-1']:.2f}x")
        print(f"  hpff / torch: 1 process {med['hpff-1'] / med['torch-1']:.2f}x, {args.np} processes "
              f"{med['hpff-mpi'] / med['torch-ddp']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(np=args.np, batch=args.batch, arch=args.arch, results=results), f, indent=1)


if __name__ == "__main__":
    main()
