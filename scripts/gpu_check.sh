#!/usr/bin/env bash
# Every GPU figure of docs/speed.md in one prepared run (issue 16), so that a GPU, whenever one is
# lent, is measured at once. Run from the repository root on the GPU machine:
#
#   bash scripts/gpu_check.sh [--out DIR] [--data DIR] [--page docs/speed.md] [--dry-run]
#
# It installs nothing: it needs torch and torchvision (the GPU image has them) and runs dsara from
# this checkout (PYTHONPATH), which imports neither optuna nor sqlalchemy for these steps. Budget:
# at most ~8 minutes on one H100/H200; each step has its own timeout, a step that fails or times
# out is recorded as such and the next one still runs. Steps:
#   1. the device (nvidia-smi, torch, CUDA)
#   2. search-step benchmark at the reference proxy, batch 32 and 256, optimized vs reference
#   3. the same with torch.compile (optimized path only)
#   4. training-step benchmark (ARNAS C=36 / 20 cells and ResNet-18, PGD-AT and TRADES with
#      PGD-7 as the arnas recipe, batch 32 and 128, bf16
#      and fp32 against the reference path) and one PGD-20 evaluation batch
#   5. the GPU-only tests (pytest -m gpu: no host sync in the search and training steps; the
#      unrolled alpha gradient with TF32 allowed elsewhere against float64, cosine >= 0.99)
#   5b. bf16 vs fp32 alpha drift of a short search against a seed control
#      (scripts/precision_check.py): the evidence `precision = auto` waits for (device.py)
#   6. a 1-epoch search of the dsara proxy on the CIFAR-10 copy (--data: the folder with
#      cifar10-jpeg-{train,test}.npz and make_cifar10.py, i.e. shared/data; skipped without it)
# Every table goes into DIR (default runs/gpu_check) and into the generated sections of the page
# (default docs/speed.md; see dsara/bench/speed_doc.py). --dry-run does all of it on the CPU at toy
# sizes in well under a minute: the test suite runs it (tests/test_gpu_check.py).
set -uo pipefail

out=runs/gpu_check data="" page=docs/speed.md dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --page) page=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (use --out DIR, --data DIR, --page FILE, --dry-run)" >&2
       exit 2 ;;
  esac
done
mkdir -p "$out" || { echo "gpu_check.sh: cannot create $out" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log="$out/gpu_check.log"
: >"$log"

if [ "$dry" = 1 ]; then
  device=cpu
  search_args=(--size small --batch 4 --steps 1 --warmup 0 --pgd-steps 1 --stage 2)
  # no --compile: inductor needs minutes on a 2-core CPU; the dry run checks the step's plumbing
  compile_args=(--size small --batch 4 --steps 1 --warmup 0 --pgd-steps 1 --stage 2 --no-reference)
  train_args=(--size small --model resnet18 --method pgd-at --batch 4 --steps 1 --warmup 0
              --pgd-steps 1 --eval-steps 1 --precision fp32)
  precision_args=(--space tiny --epochs 1 --n-train 64 --image-size 8 --batch 16 --pgd-steps 1)
  t_search=300 t_compile=300 t_train=300 t_tests=300 t_epoch=300 t_precision=300
else
  device=cuda
  search_args=(--size proxy --batch 32 --batch 256 --steps 20 --warmup 5 --profile 10)
  compile_args=(--size proxy --batch 256 --steps 20 --warmup 5 --compile --no-reference)
  train_args=(--size full --batch 32 --batch 128 --pgd-steps 7 --steps 5 --warmup 2 --precision bf16 --precision fp32
              --profile 10)
  # the dsara proxy at 16 px for 4 epochs of 40 steps: alpha drift of bf16 vs fp32 vs seed
  precision_args=(--space dsara --epochs 4 --n-train 2560 --image-size 16 --batch 32 --pgd-steps 3)
  t_search=120 t_compile=90 t_train=150 t_tests=60 t_epoch=75 t_precision=90  # 585 s at most
fi

step() {  # step NAME TIMEOUT CMD...: run, log, record the outcome
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc = 0 ]; then status="ok"; elif [ $rc = 124 ]; then status="timed out after ${limit} s"
  else status="failed (exit $rc)"; fi
  echo "| $name | $status | $took s |" >>"$out/steps.md"
  echo "   $status in $took s" | tee -a "$log"
}

printf '| step | outcome | wall |\n|---|---|---|\n' >"$out/steps.md"
"$PY" - >"$out/device.md" 2>>"$log" <<'EOF'
import platform, torch
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else f"CPU {platform.processor() or platform.machine()}"
print(f"Device: {name}; torch {torch.__version__}; CUDA {torch.version.cuda if cuda else '-'}; "
      f"cuDNN {torch.backends.cudnn.version() if cuda else '-'}.")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >>"$log" 2>&1

step "search bench" "$t_search" "$PY" scripts/bench_search.py --device "$device" "${search_args[@]}" \
  --json "$out/search.json" --markdown "$out/search.md"
step "search bench, compile" "$t_compile" "$PY" scripts/bench_search.py --device "$device" \
  "${compile_args[@]}" --json "$out/search_compile.json" --markdown "$out/search_compile.md"
step "train bench" "$t_train" "$PY" scripts/bench_train.py --device "$device" "${train_args[@]}" \
  --json "$out/train.json" --markdown "$out/train.md"
step "GPU-only tests" "$t_tests" "$PY" -m pytest -m gpu -q -s -p no:cacheprovider tests \
  --junitxml "$out/gpu_tests.xml"
step "precision drift" "$t_precision" "$PY" scripts/precision_check.py --device "$device" \
  "${precision_args[@]}" --json "$out/precision.json" --markdown "$out/precision.md"

if [ "$dry" = 1 ]; then  # the toy search: synthetic images, seconds
  epoch_cmd=("$PY" -m dsara search --space tiny --dataset synthetic --set synthetic.n_train=128
             --set synthetic.image_size=8 --epochs 1 --pgd-steps 1 --batch-size 16
             --device cpu --out "$out/search_epoch")
elif [ -n "$data" ] && [ -f "$data/cifar10-jpeg-train.npz" ]; then
  "$PY" "$data/make_cifar10.py" /tmp/dsara-cifar10 --format cifar >>"$log" 2>&1
  epoch_cmd=("$PY" -m dsara search --space dsara --dataset cifar10 --data-root /tmp/dsara-cifar10
             --epochs 1 --device cuda --out "$out/search_epoch")
else
  epoch_cmd=()
  echo "| 1-epoch CIFAR-10 search | skipped: no --data folder with cifar10-jpeg-*.npz | - |" \
    >>"$out/steps.md"
fi
[ ${#epoch_cmd[@]} -gt 0 ] && step "1-epoch search" "$t_epoch" "${epoch_cmd[@]}"

# ---- the tables, into the generated sections of the page ------------------------------------
{
  cat "$out/device.md"; echo
  echo "Command: \`bash scripts/gpu_check.sh$([ "$dry" = 1 ] && echo ' --dry-run')\` ($(date -u +%Y-%m-%d))."
  echo; cat "$out/steps.md"; echo
  for part in search search_compile train precision; do
    [ -f "$out/$part.md" ] && { echo "**$part**"; echo; cat "$out/$part.md"; echo; }
  done
  if [ -f "$out/gpu_tests.xml" ]; then
    "$PY" - "$out/gpu_tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s.find("testsuite")
print(f"GPU-only tests: {s.get('tests')} collected, {s.get('failures')} failed, "
      f"{s.get('errors')} errors, {s.get('skipped')} skipped.")
EOF
    grep -h "TF32-allowed unrolled alpha gradient" "$log" || true
    echo
  fi
  if [ -f "$out/search_epoch/metrics.jsonl" ]; then
    "$PY" - "$out/search_epoch/metrics.jsonl" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"1-epoch search: {r['epoch_time_s']:.1f} s, {r['images_per_s']:.0f} images/s, arch-val "
      f"clean {100 * r['val_clean_acc']:.1f}% / PGD {100 * r['val_pgd_acc']:.1f}%.")
EOF
  fi
} >"$out/section.md"
section=$([ "$dry" = 1 ] && echo gpu-check-dry-run || echo gpu-check)
"$PY" -m dsara.bench.speed_doc "$page" "$section" "$out/section.md"
echo "gpu_check.sh: tables in $out/section.md and in section '$section' of $page"
