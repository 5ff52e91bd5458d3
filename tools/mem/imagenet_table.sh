#!/bin/sh
# The planned memory of the paper's ImageNet configurations (issue 11, items 3 and 6):
# ResNet-101 and ResNet-152 (ImageNet family), 224x224 RGB, 1000 classes, batch 128 and 256,
# K = 4 and 8 with the reference's split tables, e2e vs InfoPro vs InfoPro + HPFF, with the
# ImageNet reference's aux nets (InfoProAux.py). HPFF is the ImageNet reference's (cascade
# level only, one decoder on the whole map, its output cut into 2x2: --pff output) and, for
# comparison, true patch-input PFF (--pff input: four decoders, one per feature patch, run
# one at a time). Prints a Markdown table, MiB = 2^20 bytes.
# Usage: tools/mem/imagenet_table.sh [path to hpff]
hpff=${1:-target/release/hpff}
echo "| net | batch | method | modules | params + grads + momentum | activations (peak) | of which decoder | conv scratch | training total | eval activations |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for arch in resnet101 resnet152; do
  for batch in 128 256; do
    for m in "e2e 1 --method e2e" "infopro 4 --method infopro --no-hpff" "infopro 8 --method infopro --no-hpff" \
      "infopro+HPFF 4 --method infopro --hpff --pff output" "infopro+HPFF 8 --method infopro --hpff --pff output" \
      "infopro+HPFF(input) 4 --method infopro --hpff --pff input" "infopro+HPFF(input) 8 --method infopro --hpff --pff input"; do
      set -- $m
      name=$1; k=$2; shift 2
      kflag="--k $k"; [ "$name" = e2e ] && kflag=""  # e2e is one module: hpff refuses --k for it
      $hpff plan --dataset folder --image-size 224 --in-channels 3 --classes 1000 --arch "$arch-imagenet" \
        $kflag --batch-size "$batch" "$@" --json |
        python3 -c "
import json, sys
v = json.load(sys.stdin); b = v['memory_bytes']
mib = lambda x: '%.1f MiB' % (x / 2**20)
name = {'infopro+HPFF': 'infopro+HPFF, pff output (reference)', 'infopro+HPFF(input)': 'infopro+HPFF, pff input'}.get('$name', '$name')
name = name if '$name' == 'e2e' else name + ' K=%d' % v['k_label']
print('| %s | %d | %s | %d | %s | %s | %s | %s | %s | %s |' % ('$arch', $batch, name, v['modules'],
      mib(b['params'] + b['grads'] + b['momentum']), mib(b['activations']), mib(b['decoder']),
      mib(b['scratch']), mib(b['total']), mib(b['eval_activations'])))"
    done
  done
done
