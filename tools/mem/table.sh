#!/bin/sh
# The memory table of issue 14: planned activation peaks (training and eval) of
# ResNet-32 (K=16) and ResNet-110 (K=55), CIFAR shapes, batch 128 and 1024 (+recompute:
# infopro+hpff with --recompute).
# Usage: tools/mem/table.sh [path to hpff]
hpff=${1:-target/release/hpff}
for arch in "resnet32 16" "resnet110 55"; do
  set -- $arch
  for batch in 128 1024; do
    for m in "e2e --method e2e" "infopro --method infopro --no-hpff" "infopro+hpff --method infopro --hpff" "+recompute --method infopro --hpff --recompute"; do
      name=${m%% *}; flags=${m#* }
      # e2e has one module and no auxiliary nets: hpff refuses --k and --aux-classifier for it.
      local_flags="--k $2 --aux-classifier 2c2f"; [ "$name" = e2e ] && local_flags=""
      $hpff plan --dataset cifar10 --arch "$1" $local_flags --batch-size "$batch" $flags --json |
        python3 -c "import json,sys; v=json.load(sys.stdin)['memory_bytes']; print('%-10s %-13s batch %5d  train %9.1f MiB  eval %8.1f MiB' % ('$1', '$name', $batch, v['activations']/2**20, v['eval_activations']/2**20))"
    done
  done
done
