#!/bin/sh
# The planned memory of the paper's ImageNet configurations (issue 11, item 6): ResNet-101
# and ResNet-152 (ImageNet family), 224x224 RGB, 1000 classes, batch 128 and 256, K = 4 and
# 8 with the reference's split tables, e2e vs InfoPro vs InfoPro + HPFF (2x2 patches),
# aux classifier 2c2f. Prints a Markdown table, MiB = 2^20 bytes.
# The aux nets are the CIFAR ones on the ImageNet shapes (the reference's ImageNet decoders
# and heads are not built yet), so the decoder columns are those of the CIFAR decoder.
# Usage: tools/mem/imagenet_table.sh [path to hpff]
hpff=${1:-target/release/hpff}
echo "| net | batch | method | modules | params + grads + momentum | activations (peak) | of which decoder | conv scratch | training total | eval activations |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for arch in resnet101 resnet152; do
  for batch in 128 256; do
    for m in "e2e 1 --method e2e" "infopro 4 --method infopro --no-hpff" "infopro 8 --method infopro --no-hpff" \
      "infopro+HPFF 4 --method infopro --hpff" "infopro+HPFF 8 --method infopro --hpff"; do
      set -- $m
      name=$1; k=$2; shift 2
      $hpff plan --dataset folder --image-size 224 --in-channels 3 --classes 1000 --arch "$arch-imagenet" \
        --k "$k" --aux-classifier 2c2f --batch-size "$batch" "$@" --json |
        python3 -c "
import json, sys
v = json.load(sys.stdin); b = v['memory_bytes']
mib = lambda x: '%.1f MiB' % (x / 2**20)
name = '$name' if '$name' == 'e2e' else '$name K=%d' % v['k_label']
print('| %s | %d | %s | %d | %s | %s | %s | %s | %s | %s |' % ('$arch', $batch, name, v['modules'],
      mib(b['params'] + b['grads'] + b['momentum']), mib(b['activations']), mib(b['decoder']),
      mib(b['scratch']), mib(b['total']), mib(b['eval_activations'])))"
    done
  done
done
