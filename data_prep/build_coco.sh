#!/usr/bin/env bash
# Build MPCC train (from train2017) and MPCC-Eval-shaped eval (from val2017, levels fixed by the
# train statistics) from a COCO 2017 download:
#   data_prep/build_coco.sh /path/to/coco /path/to/out [extra `mpcc prepare` options, e.g. --mask-mode bbox]
# Expects COCO_ROOT/annotations/instances_{train,val}2017.json and COCO_ROOT/{train,val}2017/.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 COCO_ROOT OUT_DIR [mpcc prepare options...]" >&2
  exit 2
fi
coco=$1 out=$2
shift 2
mpcc prepare train --annotations "$coco/annotations/instances_train2017.json" --images "$coco/train2017" \
  --out "$out/train" "$@"
mpcc prepare eval --annotations "$coco/annotations/instances_val2017.json" --images "$coco/val2017" \
  --out "$out/eval" --stats "$out/train" "$@"
mpcc inspect "$out/eval" --out "$out/eval_preview"
