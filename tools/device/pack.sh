#!/usr/bin/env bash
# Run HERE (the machine with Rust), from anywhere in the project: builds the release CLI and
# the test binaries the GPU check runs, and packs them into .device/ (git-ignored) with
# env.sh (finds the CUDA libraries on the GPU machine) and a copy of Fashion-MNIST for the
# short real training run. Then, through the device tool:
#   run(command="bash tools/device/gpu-check.sh", carry=[".device"], timeout_s=540)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
tests=(golden executors module_fd memory cuda nvrtc no_driver)
../shared/tools/gpu-pack "${tests[@]}"
# gpu-pack matches names by substring: keep exactly the CLI and these tests.
for f in .device/bin/*; do
    case " hpff ${tests[*]} " in *" $(basename "$f") "*) ;; *) rm "$f" ;; esac
done
# The tracked tree (47 MB of golden fixtures) travels too, under 64 MiB in all: pack the
# binaries with xz (gpu-check.sh unpacks them).
tar -cJf .device/bin.tar.xz -C .device bin && rm -r .device/bin
fm=/usr/share/datasets/fashion-mnist
if [ -n "${PACK_FMNIST:-}" ] && [ -d "$fm" ]; then
    mkdir -p .device/data/fashion-mnist
    cp "$fm"/*-ubyte* .device/data/fashion-mnist/
else
    echo "pack.sh: Fashion-MNIST not packed (PACK_FMNIST=1 packs it from $fm, 30 MB: with the fixtures over the 64 MiB the device takes): the check skips the training run" >&2
fi
du -sh .device
