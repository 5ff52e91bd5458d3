"""Fair speed comparison of hpff against PyTorch: same networks, methods, batch, threads
and precision, run interleaved (A B A B) in one invocation, each measurement in its own
process; prints median images/s, the ratios and the memory of both.

The PyTorch side is the model of tools/golden/make_golden.py (the reference forward and
backward of every method, checked against the reference code), on CIFAR-shaped random
data, with the reference's optimizer (SGD, momentum 0.9, Nesterov, weight decay 1e-4);
the hpff side is `hpff bench --json` (per-step medians). Nothing here is run by `.ci/run`.

Variants (`--variants`, in this order within every round):

  hpff                     `hpff bench` (the default allocator)
  torch-eager              PyTorch eager, as a user of the reference would run it
  torch-compile            torch.compile: e2e and eval compile the whole forward (+ loss);
                           the local methods compile every piece the step calls (stem,
                           each module's blocks, each auxiliary net with its loss, the
                           classifier) and run make_golden's step unchanged
  hpff+tcmalloc, torch-eager+tcmalloc, torch-compile+tcmalloc
                           the same with LD_PRELOAD=libtcmalloc_minimal.so.4 (Debian:
                           apt-get install libtcmalloc-minimal4)

Defaults: CPU all six; CUDA hpff, torch-eager, torch-compile. A variant that fails (a
compile error, a timeout) is recorded with the last line of its error output and not
retried in later rounds; the run goes on.

Configurations (`--configs`): `METHOD[+hpff][:k=N][:aux=HEAD][:patches=N][:arch=resnetN]
[:splits=S,B;S,B][:eval]`, or `eval` (the no-grad forward of e2e). `--arch` is the
default backbone. An ImageNet-family arch (`resnet50-imagenet`, `resnext50-32x4d-imagenet`)
is compared e2e and in eval only, against torchvision's model of that name, on random
`--image-size` inputs (default 224) with `--classes` (default 1000):

    python3 tools/bench/compare_torch.py --arch resnext50-32x4d-imagenet --batch 16 \
        --steps 3 --warmup 1 --rounds 2 --configs e2e eval

Defaults, ResNet-32 with CIFAR shapes:

  CPU  e2e  infopro:k=16:aux=2c2f  infopro+hpff:k=16:aux=2c2f  infopro+hpff:k=16:aux=0c2f  eval
  CUDA e2e  infopro:k=16  infopro+hpff:k=16:aux=2c2f:patches=2  e2e:arch=resnet110
       infopro+hpff:k=55:arch=resnet110  eval

CPU (build hpff first: `cargo build --release -p hpff`):

    python3 tools/bench/compare_torch.py --batch 128 --threads 2 --steps 10 --rounds 2 \\
        --json bench-cpu.json

    # smoke test (seconds): every variant on ResNet-8
    python3 tools/bench/compare_torch.py --arch resnet8 --batch 16 --steps 3 --rounds 1 \\
        --configs e2e infopro+hpff:k=3 eval

CUDA (on the GPU machine: PyTorch with CUDA, no Rust; hpff's binary by path, e.g. the one
tools/device/pack.sh packs into .device/bin; one command per precision runs both sides):

    python3 tools/bench/compare_torch.py --device cuda --hpff-bin .device/bin/hpff \\
        --json $OUT/bench-fp32.json
    python3 tools/bench/compare_torch.py --device cuda --tf32 --hpff-bin .device/bin/hpff \\
        --json $OUT/bench-tf32.json

    # sized for a short device call: fewer configurations, a time limit
    python3 tools/bench/compare_torch.py --device cuda --hpff-bin .device/bin/hpff \\
        --configs e2e infopro+hpff:k=16 eval --rounds 2 --time-limit 420 --json $OUT/b.json

Without a CUDA device PyTorch can see, `--device cuda` stops with one line (exit 2).

On CUDA: cuDNN benchmark mode on; strict fp32 turns TF32 off for matmuls and cuDNN on the
PyTorch side and runs hpff without `--tf32`, `--tf32` turns it on for both;
torch.compile uses mode `reduce-overhead` (CUDA graphs; `--compile-mode` to change);
20 timed steps after 5 warm-up steps (compile: at least 3) and 2 rounds by default, a
run killed after 300 s (`--run-timeout`). Every timed step is synchronized. Memory: PyTorch's `torch.cuda.max_memory_allocated` (over the timed steps
and over the whole run) and `max_memory_reserved`; hpff's arena + executor workspace
(what it holds); for both, the device's used memory sampled with nvidia-smi during the
run minus what was used before it started (the process's total, CUDA context included).
hpff loads NVRTC/cuBLAS from `HPFF_CUDA_LIB_DIR`; if unset it is pointed at the `nvidia`
wheels PyTorch brought.

Timing: each run reports the median of its per-step times (hpff: `train_step_median_s` /
`eval_pass_median_s`; PyTorch: the same, timed per step with perf_counter); a variant's
figure is the median over rounds of those medians. The JSON is rewritten after every run.
Differences left in: hpff's timed step uploads the batch (host to device on CUDA) and
copies the losses back, PyTorch's batch already lives on the device; both sides run the
optimizer step (PyTorch's eager SGD, also under torch.compile). Run it on a quiet machine:
PyTorch's OpenMP threads slow down far more than hpff's when other work shares the cores
(the harness warns when the load average is >= 0.5 at the start, and records it per run). Peak RSS is the measured process's
own: hpff's from `os.wait4` on its pid, PyTorch's worker's getrusage(RUSAGE_SELF) (its
interpreter, the torch import and compilation included: `rss_after_import_bytes` in the
JSON; inductor's compile workers are other processes); the worker also resets its
high-water mark after warm-up (/proc/self/clear_refs) and reports the peak over the timed
steps alone, the "(timed)" column. hpff's `bench` trains before it evaluates, so its
peak RSS of an eval configuration is that of the training arena. `--json FILE` writes
every run's record (the PyTorch per-step samples included).

Worker mode (what the driver runs, one measurement, one JSON line on stdout):

    python3 tools/bench/compare_torch.py --worker torch --mode eager|compile --spec ... \\
        --plan-json FILE ...
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
sys.path.insert(0, os.path.join(ROOT, "tools", "checkpoint"))

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
CPU_VARIANTS = ["hpff", "torch-eager", "torch-compile", "hpff+tcmalloc", "torch-eager+tcmalloc",
                "torch-compile+tcmalloc"]
CUDA_VARIANTS = ["hpff", "torch-eager", "torch-compile"]
CPU_CONFIGS = ["e2e", "infopro:k=16:aux=2c2f", "infopro+hpff:k=16:aux=2c2f", "infopro+hpff:k=16:aux=0c2f", "eval"]
CUDA_CONFIGS = ["e2e", "infopro:k=16", "infopro+hpff:k=16:aux=2c2f:patches=2", "e2e:arch=resnet110",
                "infopro+hpff:k=55:arch=resnet110", "eval"]
METHODS = ("e2e", "greedy", "dgl", "infopro")
MIB = 1024.0 * 1024.0


class HarnessError(Exception):
    pass


# ----------------------------------------------------------------------------------------
# Configurations


def parse_spec(text, default_arch):
    """`infopro+hpff:k=16:aux=0c2f` -> dict(method, hpff, k, aux, patches, arch, splits, eval)."""
    parts = text.split(":")
    head = parts[0]
    spec = dict(method=None, hpff=False, k=None, aux=None, patches=None, arch=default_arch, splits=None,
                eval=False, text=text)
    if head == "eval":
        spec.update(method="e2e", eval=True)
    else:
        method, _, plus = head.partition("+")
        if method not in METHODS or plus not in ("", "hpff"):
            raise HarnessError(f"configuration {text!r}: the method must be one of {', '.join(METHODS)}, "
                               f"optionally with +hpff")
        spec.update(method=method, hpff=plus == "hpff")
    for p in parts[1:]:
        key, eq, val = p.partition("=")
        if key == "eval" and not eq:
            spec["eval"] = True
        elif key in ("k", "patches") and eq and val.isdigit():
            spec[key] = int(val)
        elif key in ("aux", "arch", "splits") and eq and val:
            spec[key] = val
        else:
            raise HarnessError(f"configuration {text!r}: cannot read {p!r} "
                               f"(k=N, aux=HEAD, patches=N, arch=resnetN, splits=S,B;S,B, eval)")
    if spec["hpff"] and spec["method"] == "e2e":
        raise HarnessError(f"configuration {text!r}: +hpff needs a local method")
    if spec["eval"] and spec["method"] != "e2e":
        raise HarnessError(f"configuration {text!r}: eval is the forward of e2e only")
    return spec


def spec_label(s):
    if s["eval"]:
        return f"{s['arch']} eval (no grad)"
    out = f"{s['arch']} {s['method']}{'+hpff' if s['hpff'] else ''}"
    if s["method"] != "e2e":
        out += f" K={s['k'] or 4}" if not s["splits"] else f" splits {s['splits']}"
        if s["aux"]:
            out += f" {s['aux']}"
        if s["patches"]:
            out += f" {s['patches']}x{s['patches']}"
    return out


def imagenet_family(arch):
    return arch.endswith("-imagenet")


def hpff_model_flags(s, batch):
    if imagenet_family(s["arch"]):
        # Random inputs of the configured shape (no dataset is read by bench/plan).
        data = ["--dataset", "folder", "--in-channels", "3", "--classes", str(s["classes"]),
                "--image-size", str(s["image"])]
    else:
        data = ["--dataset", "cifar10"]
    f = data + ["--arch", s["arch"], "--method", s["method"], "--batch-size", str(batch)]
    f.append("--hpff" if s["hpff"] else "--no-hpff")
    if s["method"] != "e2e":
        if s["splits"]:
            f += ["--splits", s["splits"]]
        elif s["k"]:
            f += ["--k", str(s["k"])]
        if s["aux"]:
            f += ["--aux-classifier", s["aux"]]
        if s["patches"]:
            f += ["--patches", str(s["patches"])]
    return f


def hpff_plan(args, s):
    cmd = [args.hpff_bin, "plan"] + hpff_model_flags(s, args.batch) + ["--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"`{' '.join(cmd)}` failed: {last_line(r.stderr)}")
    return json.loads(r.stdout)


def last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def error_line(text):
    """The most telling line of a failed child's stderr: the last exception line if any."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ("Error" in ln or "error" in ln or "Exception" in ln) and not ln.startswith("File "):
            return ln[:400]
    return (lines[-1] if lines else "(no output)")[:400]


# ----------------------------------------------------------------------------------------
# The PyTorch worker (one measurement in this process)


def rss_now_bytes(field="VmRSS"):
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets this process's VmHWM to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def torch_cfg(plan, spec, batch):
    import make_golden as mg

    cfg = dict(mg.BASE)
    cfg.update(method=spec["method"], hpff=spec["hpff"], patches=plan["patches"], aux_head=plan["aux_classifier"],
               local_loss="ce", feature_dim=128, lambda1=[5.0, 0.0], lambda2=[0.5, 0.0], wx=0.001, wy=0.999,
               splits=[m["split"] for m in plan["per_module"]], k_label=plan["k_label"], image_size=32,
               batch=batch, classes=10)
    return cfg


def set_compile_limits(torch):
    """Every compiled piece shares a code object with its siblings (nn.Module's call path):
    without a high limit dynamo stops compiling after 8 of them and runs the rest eagerly."""
    cfgmod = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(cfgmod, name):
            setattr(cfgmod, name, 4096)
    for name in ("accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfgmod, name):
            setattr(cfgmod, name, 65536)


def compile_pieces(torch, net, compile_fn):
    """Compiles what a local method's step calls: stem, each module's blocks, each aux net
    (with its loss), the classifier; make_golden's step then runs unchanged."""
    import torch.nn as nn

    parts = [compile_fn(nn.Sequential(*p)) for p in net.parts]
    net.run_part = lambda j, x: parts[j](x)
    net.stem = compile_fn(net.stem)
    net.classify = compile_fn(net.classify)
    for name, m in list(net.named_children()):
        if name.startswith(("aux_classifier_", "net_classifier_", "aux_decoder_", "decoder_")):
            setattr(net, name, compile_fn(m))


def worker_torch(args):
    rss_import0 = rss_now_bytes()
    import resource

    import torch
    import torch.nn.functional as F

    import make_golden as mg

    rss_import = rss_now_bytes()
    spec = json.loads(args.spec)
    with open(args.plan_json) as f:
        plan = json.load(f)
    cuda = args.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise HarnessError("PyTorch sees no CUDA device")
        dev = torch.device("cuda:0" if args.device == "cuda" else args.device)  # set_device needs an index
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(args.threads)

    cfg = torch_cfg(plan, spec, args.batch)
    torch.manual_seed(0)
    imagenet = imagenet_family(spec["arch"])
    if imagenet:
        # torchvision's network, the one hpff's ImageNet family reproduces (e2e and eval).
        import torchvision
        from torchvision_load import torchvision_name

        if spec["method"] != "e2e":
            raise HarnessError("ImageNet-family archs are compared end to end and in eval only")
        net = getattr(torchvision.models, torchvision_name(spec["arch"]))(weights=None, num_classes=spec["classes"])
        net = net.to(dev)
    else:
        depth = int(spec["arch"].removeprefix("resnet"))
        blocks = (depth - 2) // 6
        net = mg.LocalNet(cfg, blocks=(blocks, blocks, blocks)).to(dev)
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(args.batch, 3, spec["image"], spec["image"], generator=gen).to(dev)
    target = torch.randint(0, spec["classes"], (args.batch,), generator=gen).to(dev)
    # make_golden's restore_image builds its mean/std on the CPU; on the GPU give it ones there
    if cuda:
        mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        mg.restore_image = lambda _cfg, im: im.mul(std) + mean
        # supcon's torch.eye is CPU-only too; only `local_loss=contrast` uses it (not configured here)

    compiled = args.mode == "compile"
    compile_mode = args.compile_mode or ("reduce-overhead" if cuda else "default")
    cudagraphs = compiled and cuda and compile_mode in ("reduce-overhead", "max-autotune")
    if compiled:
        set_compile_limits(torch)

        def compile_fn(fn):
            return torch.compile(fn, mode=compile_mode, dynamic=False)

    def full_forward(x):
        if imagenet:
            return net(x)
        x = net.stem(x)
        for j in range(len(net.parts)):
            x = net.run_part(j, x)
        return net.classify(x)

    opt = None
    if spec["eval"]:
        net.eval()
        fwd = compile_fn(full_forward) if compiled else full_forward

        def step():
            with torch.no_grad():
                return fwd(img)
    else:
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        if spec["method"] == "e2e" and compiled:
            def loss_fn(x, t):
                return F.cross_entropy(full_forward(x), t)

            lf = compile_fn(loss_fn)

            def body():
                lf(img, target).backward()
        else:
            if compiled:
                compile_pieces(torch, net, compile_fn)

            def body():
                if imagenet:
                    F.cross_entropy(net(img), target).backward()
                else:
                    mg.train_step(net, cfg, img, target)

        def step():
            opt.zero_grad(set_to_none=True)
            body()
            opt.step()

    def timed():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    warmup = max(args.warmup, 3) if compiled else args.warmup
    t0 = time.perf_counter()
    warm = [timed() for _ in range(warmup)]
    warm_s = time.perf_counter() - t0
    whole_alloc = whole_reserved = None
    # clear_refs resets the counter ru_maxrss reads too: take the whole-run peak first
    peak_warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm_reset = reset_peak_rss()
    if cuda:
        whole_alloc = torch.cuda.max_memory_allocated(dev)
        whole_reserved = torch.cuda.max_memory_reserved(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = [timed() for _ in range(args.steps)]
    out = dict(
        side="torch", mode=args.mode, device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
        tf32=args.tf32 if cuda else None, compile_mode=compile_mode if compiled else None, batch=args.batch,
        steps=args.steps, warmup=warmup, warmup_s=warm_s, warmup_step_s=warm, step_times_s=times,
        median_s=statistics.median(times), mean_s=statistics.fmean(times),
        images_per_s_median=args.batch / statistics.median(times),
        params=sum(p.numel() for p in net.parameters()),
        rss_before_import_bytes=rss_import0, rss_after_import_bytes=rss_import,
        peak_rss_self_bytes=max(peak_warm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        peak_rss_timed_bytes=rss_now_bytes("VmHWM") if hwm_reset else None,
    )
    if cuda:
        steady = torch.cuda.max_memory_allocated(dev)
        whole_reserved = max(whole_reserved, torch.cuda.max_memory_reserved(dev))
        free, total = torch.cuda.mem_get_info(dev)
        out.update(cuda_max_allocated_steady_bytes=steady, cuda_max_allocated_bytes=max(whole_alloc, steady),
                   cuda_max_reserved_bytes=whole_reserved, cuda_device_used_end_bytes=total - free,
                   cuda_device_total_bytes=total, gpu=torch.cuda.get_device_name(dev),
                   cudnn_benchmark=torch.backends.cudnn.benchmark)
    print(json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------
# Running one measurement in a child process


class GpuMemSampler:
    """The device's used memory (nvidia-smi), sampled while a child runs; peak - baseline."""

    def __init__(self, index, interval):
        self.index = index
        self.interval = interval
        self.exe = shutil.which("nvidia-smi")
        self.peak = None
        self.base = None
        self._stop = threading.Event()
        self._thread = None

    def _read(self):
        try:
            r = subprocess.run([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i",
                                str(self.index)], capture_output=True, text=True, timeout=10)
            return int(float(r.stdout.strip().splitlines()[0])) * 1024 * 1024
        except Exception:
            return None

    def start(self):
        if not self.exe or self.interval <= 0:
            return
        self.base = self._read()

        def loop():
            while not self._stop.is_set():
                v = self._read()
                if v is not None:
                    self.peak = v if self.peak is None else max(self.peak, v)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread:
            self._stop.set()
            self._thread.join()
        if self.base is None or self.peak is None:
            return None
        return max(0, self.peak - self.base)


def run_child(cmd, env, timeout, gpu_index=None, smi_interval=0.1):
    """Runs cmd, returns (rc, stdout, stderr, peak RSS bytes of that process, device bytes, seconds)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sampler = GpuMemSampler(gpu_index, smi_interval) if gpu_index is not None else None
        if sampler:
            sampler.start()
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        killed = []

        def kill():
            killed.append(True)
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t
        dev_bytes = sampler.stop() if sampler else None
        out.seek(0)
        err.seek(0)
        so, se = out.read(), err.read()
        if killed:
            se += f"\ntimed out after {timeout} s (killed)"
        return rc, so, se, ru.ru_maxrss * 1024, dev_bytes, secs


def json_line(text):
    for ln in reversed(text.splitlines()):
        ln = ln.strip()
        if ln.startswith("{"):
            return json.loads(ln)
    raise ValueError("no JSON line in the output")


def child_env(args, variant):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if variant.endswith("+tcmalloc"):
        env["LD_PRELOAD"] = args.tcmalloc
    if not args.cuda:
        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[v] = str(args.threads)
    elif variant.startswith("hpff") and not env.get("HPFF_CUDA_LIB_DIR"):
        dirs = nvidia_lib_dirs()
        if dirs:
            env["HPFF_CUDA_LIB_DIR"] = ":".join(dirs)
    return env


def nvidia_lib_dirs():
    """The lib folders of the `nvidia` wheels (NVRTC, cuBLAS) PyTorch brought, as README.md says."""
    import importlib.util

    found = importlib.util.find_spec("nvidia")
    if not found or not found.submodule_search_locations:
        return []
    out = []
    for p in found.submodule_search_locations:
        for d in sorted(os.listdir(p)):
            lib = os.path.join(p, d, "lib")
            if os.path.isdir(lib):
                out.append(lib)
    return out


def measure(args, spec, plan_file, variant):
    env = child_env(args, variant)
    gpu = args.gpu_index if args.cuda else None
    if variant.startswith("hpff"):
        cmd = [args.hpff_bin, "bench"] + hpff_model_flags(spec, args.batch) + [
            "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup), "--json"]
        if not args.cuda:
            cmd += ["--threads", str(args.threads)]
        if args.cuda and args.tf32:
            cmd.append("--tf32")
    else:
        mode = "compile" if variant.startswith("torch-compile") else "eager"
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "torch", "--mode", mode,
               "--spec", json.dumps(spec), "--plan-json", plan_file, "--device", args.device,
               "--batch", str(args.batch), "--threads", str(args.threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        if args.tf32:
            cmd.append("--tf32")
        if args.compile_mode:
            cmd += ["--compile-mode", args.compile_mode]
    rc, so, se, rss, dev_bytes, secs = run_child(cmd, env, args.run_timeout, gpu, args.smi_interval)
    rec = dict(variant=variant, config=spec["text"], cmd=cmd, ld_preload=env.get("LD_PRELOAD"), rc=rc,
               wall_s=secs, peak_rss_wait4_bytes=rss, device_used_sampled_bytes=dev_bytes)
    if rc != 0:
        rec["error"] = error_line(se)
        return rec
    try:
        data = json_line(so)
    except ValueError as e:
        rec.update(rc=-1, error=f"{e}; stderr: {error_line(se)}")
        return rec
    rec["raw"] = data
    if variant.startswith("hpff"):
        key = "eval" if spec["eval"] else "train"
        med = data["eval_pass_median_s" if spec["eval"] else "train_step_median_s"]
        rec.update(median_s=med, images_per_s=args.batch / med, peak_rss_bytes=rss,
                   mean_s=data["eval_pass_s" if spec["eval"] else "train_step_s"], timed=key,
                   held_bytes=data.get("arena_bytes", 0) + data.get("executor_extra_bytes", 0))
    else:
        rec.update(median_s=data["median_s"], images_per_s=data["images_per_s_median"], mean_s=data["mean_s"],
                   peak_rss_bytes=data["peak_rss_self_bytes"], peak_rss_timed_bytes=data["peak_rss_timed_bytes"],
                   warmup_s=data["warmup_s"])
        for k in ("cuda_max_allocated_steady_bytes", "cuda_max_allocated_bytes", "cuda_max_reserved_bytes",
                  "cuda_device_used_end_bytes"):
            if k in data:
                rec[k] = data[k]
    return rec


# ----------------------------------------------------------------------------------------
# Report


def fmt_mib(b):
    return "-" if b is None else f"{b / MIB:.0f}"


def summarize(recs, batch):
    ok = [r for r in recs if r.get("rc") == 0]
    if not ok:
        return None
    med = statistics.median(r["median_s"] for r in ok)
    last = ok[-1]
    s = dict(runs=len(ok), median_s=med, images_per_s=batch / med, per_run=[r["images_per_s"] for r in ok],
             peak_rss_bytes=max(r["peak_rss_bytes"] for r in ok))
    for k in ("peak_rss_timed_bytes", "held_bytes", "cuda_max_allocated_steady_bytes", "cuda_max_allocated_bytes",
              "cuda_max_reserved_bytes", "device_used_sampled_bytes", "warmup_s"):
        vals = [r[k] for r in ok if r.get(k) is not None]
        if vals:
            s[k] = max(vals)
    return s


def print_table(args, cfg_entries, results):
    print()
    hdr = (f"hpff vs PyTorch on {args.device_label}; batch {args.batch}; "
           + (f"{args.threads} threads; " if not args.cuda else f"{'TF32' if args.tf32 else 'strict fp32'}; ")
           + f"median of {args.steps} steps per run (after {args.warmup} warm-up; compile: >= 3), "
           f"median over {args.rounds} round(s)")
    print(hdr)
    summary = []
    for spec, _plan in cfg_entries:
        print()
        print(f"{spec_label(spec)}  [{'eval pass' if spec['eval'] else 'training step'}]")
        if args.cuda:
            print(f"  {'variant':<24}{'img/s':>10}{'ms/step':>10}  {'runs img/s':<20}{'hpff/x':>7}"
                  f"{'held|alloc MiB':>16}{'reserved':>10}{'dev used':>10}{'RSS MiB':>9}")
        else:
            print(f"  {'variant':<24}{'img/s':>10}{'ms/step':>10}  {'runs img/s':<20}{'hpff/x':>7}{'peak RSS MiB':>14}{'(timed)':>9}")
        stats = {}
        for v in args.variants:
            recs = results[spec["text"]].get(v, [])
            stats[v] = summarize(recs, args.batch)
        for v in args.variants:
            s = stats[v]
            recs = results[spec["text"]].get(v, [])
            if s is None:
                err = next((r.get("error") for r in recs if r.get("error")), "not run")
                print(f"  {v:<24}FAILED: {err}")
                continue
            hp = stats.get("hpff+tcmalloc" if v.endswith("+tcmalloc") and stats.get("hpff+tcmalloc") else "hpff")
            ratio = f"{hp['images_per_s'] / s['images_per_s']:.2f}" if hp and v.startswith("torch") else "-"
            runs = " ".join(f"{x:.1f}" for x in s["per_run"])
            line = f"  {v:<24}{s['images_per_s']:>10.1f}{1e3 * s['median_s']:>10.2f}  {runs:<20}{ratio:>7}"
            if args.cuda:
                mem = s.get("held_bytes") if v.startswith("hpff") else s.get("cuda_max_allocated_steady_bytes")
                line += (f"{fmt_mib(mem):>16}{fmt_mib(s.get('cuda_max_reserved_bytes')):>10}"
                         f"{fmt_mib(s.get('device_used_sampled_bytes')):>10}{fmt_mib(s['peak_rss_bytes']):>9}")
            else:
                line += f"{fmt_mib(s['peak_rss_bytes']):>14}{fmt_mib(s.get('peak_rss_timed_bytes')):>9}"
            if s.get("warmup_s") is not None and "compile" in v:
                line += f"   (warm-up incl. compile {s['warmup_s']:.1f} s)"
            print(line)
        hp = stats.get("hpff")
        torch_ok = {v: s for v, s in stats.items() if s and v.startswith("torch")}
        if hp and torch_ok:
            best_v = max(torch_ok, key=lambda v: torch_ok[v]["images_per_s"])
            best_h = max((v for v in stats if v.startswith("hpff") and stats[v]),
                         key=lambda v: stats[v]["images_per_s"])
            summary.append((spec, best_h, stats[best_h], best_v, torch_ok[best_v]))
    if summary:
        print()
        print("summary: the fastest variant of each side")
        print(f"  {'configuration':<40}{'hpff img/s':>11}{'torch img/s':>12}  {'(torch variant)':<24}{'ratio':>6}"
              f"{'hpff MiB':>10}{'torch MiB':>10}")
        for spec, hv, hs, tv, ts in summary:
            if args.cuda:
                hm, tm = hs.get("held_bytes"), ts.get("cuda_max_allocated_steady_bytes")
            else:
                hm, tm = hs["peak_rss_bytes"], ts["peak_rss_bytes"]
            print(f"  {spec_label(spec):<40}{hs['images_per_s']:>11.1f}{ts['images_per_s']:>12.1f}  {tv:<24}"
                  f"{hs['images_per_s'] / ts['images_per_s']:>6.2f}{fmt_mib(hm):>10}{fmt_mib(tm):>10}")
    print()
    if args.cuda:
        print("hpff/x: hpff's images/s over the row's (same allocator); held|alloc: hpff's arena + executor\n"
              "workspace, PyTorch's max_memory_allocated over the timed steps (whole run in the JSON); reserved:\n"
              "PyTorch's max_memory_reserved; dev used: the device's used memory during the run (nvidia-smi)\n"
              "minus before it; RSS: the process's peak host RSS. summary memory: held vs max_memory_allocated.")
    else:
        print("hpff/x: hpff's images/s over the row's (same allocator); peak RSS: the process's own peak, whole\n"
              "run (PyTorch: interpreter, import and compilation included); (timed): PyTorch's peak over the\n"
              "timed steps only. summary memory: whole-run peak RSS.")


# ----------------------------------------------------------------------------------------
# Driver


def preflight_cuda(args):
    """Fails with one line unless PyTorch sees the asked-for CUDA device."""
    idx = args.gpu_index
    code = ("import json, torch; ok = torch.cuda.is_available(); "
            "print(json.dumps([torch.__version__, ok, torch.cuda.device_count() if ok else 0, "
            f"torch.cuda.get_device_name({idx}) if ok and torch.cuda.device_count() > {idx} else None]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"--device {args.device}: cannot ask PyTorch about CUDA: {error_line(r.stderr)}")
    version, ok, count, name = json.loads(r.stdout.strip().splitlines()[-1])
    if not ok:
        raise HarnessError(f"--device {args.device}: PyTorch {version} sees no CUDA device "
                           f"(torch.cuda.is_available() is False); run it on the GPU machine")
    if count <= idx:
        raise HarnessError(f"--device {args.device}: PyTorch {version} sees {count} CUDA device(s)")
    return name


def driver(args):
    args.cuda = args.device.startswith("cuda")
    if args.device != "cpu" and not args.cuda:
        raise HarnessError(f"--device must be cpu, cuda or cuda:N, not {args.device!r}")
    args.gpu_index = int(args.device.partition(":")[2] or 0) if args.cuda else None
    if args.cuda:
        gpu_name = preflight_cuda(args)
        args.device_label = f"{args.device} ({gpu_name})"
    else:
        args.device_label = "cpu"
    if not os.path.isfile(args.hpff_bin) or not os.access(args.hpff_bin, os.X_OK):
        raise HarnessError(f"no hpff binary at {args.hpff_bin} (build it with `cargo build --release -p hpff`, "
                           f"or pass --hpff-bin)")
    args.batch = args.batch or (1024 if args.cuda else 128)
    args.steps = args.steps or (20 if args.cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.cuda else 2)
    args.rounds = args.rounds or 2
    args.run_timeout = args.run_timeout or (300.0 if args.cuda else 1800.0)
    args.variants = args.variants or (CUDA_VARIANTS if args.cuda else CPU_VARIANTS)
    known = set(CPU_VARIANTS)
    for v in args.variants:
        if v not in known:
            raise HarnessError(f"unknown variant {v!r} (one of {', '.join(CPU_VARIANTS)})")
    if any(v.endswith("+tcmalloc") for v in args.variants) and not os.path.isfile(args.tcmalloc):
        raise HarnessError(f"no tcmalloc at {args.tcmalloc} (Debian: apt-get install libtcmalloc-minimal4; "
                           f"or leave out the +tcmalloc variants)")
    specs = [parse_spec(t, args.arch) for t in (args.configs or (CUDA_CONFIGS if args.cuda else CPU_CONFIGS))]
    for sp in specs:
        big = imagenet_family(sp["arch"])
        sp["image"] = args.image_size or (224 if big else 32)
        sp["classes"] = args.classes or (1000 if big else 10)

    tmpdir = tempfile.mkdtemp(prefix="hpff-bench-")
    cfg_entries = []
    for s in specs:
        plan = hpff_plan(args, s)
        path = os.path.join(tmpdir, f"plan{len(cfg_entries)}.json")
        with open(path, "w") as f:
            json.dump(plan, f)
        cfg_entries.append((s, plan, path))
    results = {s["text"]: {} for s, _, _ in cfg_entries}
    load = os.getloadavg()[0]
    if load >= 0.5:
        print(f"warning: load average {load:.2f} at the start: the machine is not quiet, and PyTorch's OpenMP "
              f"threads suffer far more than hpff's from sharing cores", flush=True)
    failed = set()
    started = time.time()
    skipped = 0
    for rnd in range(args.rounds):
        for s, plan, path in cfg_entries:
            for v in args.variants:
                if (s["text"], v) in failed:
                    continue
                if args.time_limit and time.time() - started > args.time_limit:
                    skipped += 1
                    continue
                load = os.getloadavg()[0]
                rec = measure(args, s, path, v)
                rec.update(round=rnd, loadavg_before=load)
                results[s["text"]].setdefault(v, []).append(rec)
                if rec["rc"] == 0:
                    msg = f"{rec['images_per_s']:.1f} img/s, peak RSS {fmt_mib(rec['peak_rss_bytes'])} MiB"
                else:
                    failed.add((s["text"], v))
                    msg = f"FAILED ({rec['error']})"
                print(f"[round {rnd + 1}/{args.rounds}] {spec_label(s):<40} {v:<24} {msg}  ({rec['wall_s']:.1f} s)",
                      flush=True)
                write_json(args, cfg_entries, results, started)  # after every run: a killed run keeps its samples
    shutil.rmtree(tmpdir, ignore_errors=True)
    if skipped:
        print(f"--time-limit {args.time_limit:g} s reached: {skipped} run(s) not started")
    print_table(args, [(s, p) for s, p, _ in cfg_entries], results)
    if args.json:
        print(f"\nevery sample: {args.json}")


def write_json(args, cfg_entries, results, started):
    if args.json:
        doc = dict(
            device=args.device_label, batch=args.batch, threads=None if args.cuda else args.threads,
            tf32=args.tf32 if args.cuda else None, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
            variants=args.variants, hpff_bin=os.path.abspath(args.hpff_bin), tcmalloc=args.tcmalloc,
            wall_s=time.time() - started,
            configs=[dict(spec=s, label=spec_label(s), plan=p, summary={v: summarize(results[s["text"]].get(v, []), args.batch)
                                                                        for v in args.variants},
                          runs=results[s["text"]]) for s, p, _ in cfg_entries])
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, args.json)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring (top of this file) for the details.")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--tf32", action="store_true", help="CUDA: TF32 on both sides (default strict fp32)")
    ap.add_argument("--configs", nargs="+", metavar="SPEC", help="METHOD[+hpff][:k=N][:aux=HEAD][:patches=N][:arch=resnetN][:eval] or eval; default per device")
    ap.add_argument("--arch", default="resnet32", help="default backbone of the configurations (resnet32)")
    ap.add_argument("--image-size", type=int, help="input side (default 32; 224 for the -imagenet archs)")
    ap.add_argument("--classes", type=int, help="classes (default 10; 1000 for the -imagenet archs)")
    ap.add_argument("--batch", type=int, help="batch size (default CPU 128, CUDA 1024)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="CPU threads for both sides (default: the cores this process may use)")
    ap.add_argument("--steps", type=int, help="timed steps per run (default CPU 10, CUDA 20)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per run (default CPU 2, CUDA 5; compile >= 3)")
    ap.add_argument("--rounds", type=int, help="rounds over all variants, A B A B (default 2)")
    ap.add_argument("--variants", nargs="+", metavar="V", help=f"subset of {' '.join(CPU_VARIANTS)}")
    ap.add_argument("--compile-mode", help="torch.compile mode (default: CPU default, CUDA reduce-overhead)")
    ap.add_argument("--hpff-bin", default=os.path.join(ROOT, "target", "release", "hpff"),
                    help="the hpff binary (default target/release/hpff)")
    ap.add_argument("--tcmalloc", default=TCMALLOC, help=f"tcmalloc to preload (default {TCMALLOC})")
    ap.add_argument("--run-timeout", type=float, help="seconds before a run is killed (default CPU 1800, CUDA 300)")
    ap.add_argument("--time-limit", type=float, help="start no run after this many seconds; report what ran")
    ap.add_argument("--smi-interval", type=float, default=0.1,
                    help="CUDA: seconds between nvidia-smi memory samples (0: none)")
    ap.add_argument("--json", metavar="FILE", help="write every run's record here")
    # worker mode (run by the driver)
    ap.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--plan-json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        if args.worker:
            worker_torch(args)
        else:
            driver(args)
    except HarnessError as e:
        print(f"compare_torch.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
