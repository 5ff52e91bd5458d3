#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the project root, after tools/device/pack.sh packed .device/
# here. Runs every CUDA test (HPFF_REQUIRE_CUDA=1: a missing device fails instead of
# skipping), hpff's own benchmark, a one-epoch Fashion-MNIST run on the GPU (when packed)
# and the side-by-side with PyTorch, and writes four files under $OUT (the device tool
# brings back at most 8): summary.txt (one line a part), parts.log (every part's output in
# order), device.txt (libraries found, nvidia-smi) and bench-fp32.json (every benchmark
# sample). About 2 minutes plus up to 5 for the PyTorch side. Exit status: the number of
# failed parts.
set -u
OUT=${OUT:-/tmp/hpff-gpu}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
# shellcheck disable=SC1091
source .device/env.sh > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# HPFF_CUDA_CONV=cudnn: a cuDNN that does not load fails the check instead of falling back.
export HPFF_REQUIRE_CUDA=1 HPFF_REQUIRE_NVRTC=1 HPFF_FIXTURES=tests/fixtures/golden HPFF_CUDA_CONV=cudnn
HPFF_CUDA_LIB_DIR=$(echo "$LD_LIBRARY_PATH" | tr ':' '\n' | while read -r d; do { ls "$d"/libnvrtc.so* >/dev/null 2>&1 || ls "$d"/libcudnn.so* >/dev/null 2>&1; } && echo "$d"; done | paste -sd:)
export HPFF_CUDA_LIB_DIR
nvidia-smi >> "$OUT/device.txt" 2>&1
# Every cuDNN on the machine (a second installation on the loader's path is what makes a
# wrong shim load; see kernels/src/dnn_api.rs).
{ echo "cuDNN files:"; find / -xdev -name 'libcudnn.so*' 2>/dev/null | head -20; } >> "$OUT/device.txt"
failed=0
part() { # name, command...
    local name=$1; shift
    local t0=$SECONDS
    timeout 300 "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || failed=$((failed + 1))
    last_rc=$rc
    { echo "=== $name (rc $rc): $*"; cat "$LOGS/$name.log"; } >> "$OUT/parts.log"
    printf '%-28s rc %3d  %4d s  %s\n' "$name" "$rc" $((SECONDS - t0)) "$(grep -E 'test result|passed|error' "$LOGS/$name.log" | tail -1)" | tee -a "$OUT/summary.txt"
}
B=.device/bin
if [ -f .device/bin.tar.xz ]; then
    mkdir -p /tmp/hpff-device && tar -xJf .device/bin.tar.xz -C /tmp/hpff-device && B=/tmp/hpff-device/bin
fi
part nvrtc            $B/nvrtc --nocapture
# Every executor test, CUDA instances only (the CPU ones ran in CI).
for t in golden executors module_fd memory; do
    part "$t" $B/$t cuda --skip cuda_emulated --nocapture --test-threads=1
done
# The path without cuDNN (im2col kernels and cuBLAS GEMMs) against PyTorch too.
part golden-im2col env HPFF_CUDA_CONV=im2col $B/golden cuda --skip cuda_emulated --nocapture --test-threads=1
part cuda             $B/cuda --nocapture --test-threads=1
# Throughput and held memory at the reference's CIFAR batch (synthetic data).
part bench-e2e-im2col env HPFF_CUDA_CONV=im2col $B/hpff bench --device cuda --dataset cifar10 --arch resnet32 --method e2e --batch-size 1024 --steps 20 --json
part bench-e2e        $B/hpff bench --device cuda --dataset cifar10 --arch resnet32 --method e2e --batch-size 1024 --steps 20 --json
bench_rc=$last_rc
part bench-hpff-k16   $B/hpff bench --device cuda --dataset cifar10 --arch resnet32 --method infopro --hpff --k 16 --batch-size 1024 --steps 20 --json
part bench-hpff-tf32  $B/hpff bench --device cuda --tf32 --dataset cifar10 --arch resnet32 --method infopro --hpff --k 16 --batch-size 1024 --steps 20 --json
if [ -d .device/data/fashion-mnist ]; then
    part train-fmnist $B/hpff train --device cuda --data-dir .device/data/fashion-mnist --arch resnet20 \
        --method infopro --hpff --k 4 --epochs 1 --out "$LOGS/run-fmnist"
    part train-fmnist-cpu-eval $B/hpff eval --checkpoint "$LOGS/run-fmnist" --device cpu --data-dir .device/data/fashion-mnist --limit-test 2000
else
    echo "train-fmnist: skipped (Fashion-MNIST not packed; see pack.sh)" | tee -a "$OUT/summary.txt"
fi
# hpff against PyTorch eager and torch.compile, interleaved (tools/bench/compare_torch.py),
# inside the part's 300 s: one round, compile runs cut at 90 s. HPFF_CHECK_TORCH=0 skips it.
# Only when hpff's own benchmark ran (the device time is better kept for a rerun).
if [ "${HPFF_CHECK_TORCH:-1}" != 0 ] && [ "$bench_rc" = 0 ]; then
    part torch-compare python3 tools/bench/compare_torch.py --device cuda --hpff-bin "$B/hpff" \
        --configs e2e infopro+hpff:k=16:aux=2c2f:patches=2 eval infopro:k=16 --rounds 1 \
        --run-timeout 90 --time-limit 200 --json "$OUT/bench-fp32.json"
else
    echo "torch-compare: skipped (HPFF_CHECK_TORCH=0 or hpff's benchmark failed)" | tee -a "$OUT/summary.txt"
fi
echo "failed parts: $failed, $SECONDS s" | tee -a "$OUT/summary.txt"
exit "$failed"
