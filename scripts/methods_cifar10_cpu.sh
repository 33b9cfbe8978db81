#!/usr/bin/env bash
# The training methods of dsara/train/methods on one architecture, CIFAR-10 at a CPU size: each run
# trains resnet_tiny on 2,000 training images (500 more held out for model selection) for 4
# epochs, then `dsara evaluate` measures clean and PGD-20 accuracy on a seeded, class-stratified subset of 500 test images.
# docs/methods.md shows what it printed. A run this small ranks nothing (see there).
#
#   OMP_NUM_THREADS=1 bash scripts/methods_cifar10_cpu.sh DATA_ROOT [OUT]
set -euo pipefail
DATA=${1:?usage: methods_cifar10_cpu.sh DATA_ROOT [OUT]}
OUT=${2:-runs/methods-cifar10-cpu}
ARCH=resnet_tiny
COMMON=(--dataset cifar10 --data-root "$DATA" --train-size 2000 --val-size 500 --epochs 4
        --batch-size 64 --lr 0.1 --schedule cosine --val-steps 5 --device cpu)
PGD=(--steps 3 --step-size 3/255)  # the PGD-based methods' inner attack: 3 steps of 3/255 at 8/255

train() {  # name, then dsara train options
  local name=$1; shift
  python -m dsara train "$ARCH" "${COMMON[@]}" --out "$OUT/$name" "$@" | tail -n 1
}

# labeled-data methods
train pgd-at --method pgd-at "${PGD[@]}"
train iat --method iat "${PGD[@]}"
train iat-manifold --method iat-manifold "${PGD[@]}"
train bang --method bang
train jsigr --method jsigr
train so-at --method so-at  # its own default: one step of eps along sign(d), d from 5 CG iterations
# mart-ss: a plainly trained teacher (bang with beta = 0 is plain training) pseudo-labels 2,000
# training images the labeled runs never see (their labels dropped)
train plain --method bang --set method_options.beta=0
python scripts/unlabeled_pool.py --dataset cifar10 --data-root "$DATA" --train-size 2000 \
  --val-size 500 --count 2000 --out "$OUT/pool"
train mart-ss --method mart-ss "${PGD[@]}" --unlabeled "$OUT/pool" --teacher "$OUT/plain"
# ladder fine-tunes the PGD-AT run for 2 epochs on 1/2 clean + 1/2 latent-boundary images
train ladder --method ladder --teacher "$OUT/pgd-at" --epochs 2 --lr 0.01 \
  --set method_options.decoder_epochs=5 --set method_options.svm_epochs=5

for run in pgd-at iat iat-manifold bang jsigr so-at plain mart-ss ladder; do
  python -m dsara evaluate "$OUT/$run" --attacks clean,pgd20 --eps 8/255 --limit 500 \
    --device cpu > "$OUT/$run/evaluate.txt"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| run | clean | PGD-20 | training time (s) |\n|---|---|---|---|")
for run in ["pgd-at", "iat", "iat-manifold", "bang", "jsigr", "so-at", "plain", "mart-ss", "ladder"]:
    ev = json.loads((out / run / "evaluation.json").read_text())
    hist = json.loads((out / run / "metrics.json").read_text())["history"]
    acc = ev["accuracy"]
    print(f"| {run} | {100 * acc['clean']:.1f}% | {100 * acc['pgd20']:.1f}% | "
          f"{sum(h['time_s'] for h in hist):.0f} |")
PY
