#!/usr/bin/env bash
# Run HERE (the machine with Rust), from anywhere in the project: builds the release CLI and
# the test binaries the GPU check runs, and packs them into .device/ (git-ignored) with
# env.sh (finds the CUDA libraries on the GPU machine) and a copy of Fashion-MNIST for the
# short real training run. Then, through the device tool:
#   run(command="bash tools/device/gpu-check.sh", carry=[".device"], timeout_s=540)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/tools/gpu-pack golden executors module_fd memory cuda nvrtc no_driver
fm=/usr/share/datasets/fashion-mnist
if [ -d "$fm" ]; then
    mkdir -p .device/data/fashion-mnist
    cp "$fm"/*-ubyte* .device/data/fashion-mnist/
else
    echo "pack.sh: $fm missing (apt-get install dataset-fashion-mnist): the check will skip the training run" >&2
fi
du -sh .device
