#!/usr/bin/env bash
# GPU speed check: training images/s and peak GPU memory of mlc_utils.train.loop.fit against a
# reference loop built from timm's components, for tf_efficientnet_lite0 (the study's model,
# random init where the packaged weights are not installed) and swin_tiny_patch4_window7_224
# (random init), bf16 autocast, synthetic random tensors (no data travels). Prints ONE table.
#
# On a lent GPU machine (torch/timm installed system-wide, repository copied, no pip):
#     bash scripts/gpu_check.sh                   # ~3 minutes on an H100; 10 child processes
#                                                 # (2 models x 5 variants); children that would end
#                                                 # after GPU_CHECK_BUDGET s are skipped and named
# Here, on the CPU, with tiny settings (checks that it runs, not a measurement):
#     GPU_CHECK_DEVICE=cpu GPU_CHECK_STEPS=2 bash scripts/gpu_check.sh
#
# Variants (see benchmarks/train_throughput.py): fit = mlc_utils.train.loop.fit; timm = the reference
# loop built from timm's components; timm_cl = it with channels_last; fit_cudnn = fit with
# cudnn.benchmark on (the reference sets it, as timm's train.py does); loader = the DataLoader alone.
#
# Settings (environment): GPU_CHECK_DEVICE (cuda), GPU_CHECK_STEPS (40 timed steps; 2 on cpu),
# GPU_CHECK_WARMUP (5; 1 on cpu), GPU_CHECK_BATCH (128; 4 on cpu), GPU_CHECK_IMG (224; 64 on cpu),
# GPU_CHECK_MODELS, GPU_CHECK_VARIANTS (fit,timm,timm_cl,fit_cudnn,loader; fit,timm,loader on cpu),
# GPU_CHECK_WORKERS (8; 0 on cpu), GPU_CHECK_THREADS (torch threads: all cores; 1 on cpu), GPU_CHECK_BUDGET (250 s: start no child after that),
# GPU_CHECK_TIMEOUT (295 s: hard stop), PYTHON (python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [[ "$DEVICE" == cpu ]]; then
    STEPS=${GPU_CHECK_STEPS:-2}; WARMUP=${GPU_CHECK_WARMUP:-1}; BATCH=${GPU_CHECK_BATCH:-4}
    IMG=${GPU_CHECK_IMG:-64}; WORKERS=${GPU_CHECK_WORKERS:-0}
    VARIANTS=${GPU_CHECK_VARIANTS:-fit,timm,loader}
    THREADS=${GPU_CHECK_THREADS:-1}   # a shared CPU: 1 thread avoids stalls of idle-waiting OpenMP threads
else
    STEPS=${GPU_CHECK_STEPS:-40}; WARMUP=${GPU_CHECK_WARMUP:-5}; BATCH=${GPU_CHECK_BATCH:-128}
    IMG=${GPU_CHECK_IMG:-224}; WORKERS=${GPU_CHECK_WORKERS:-8}
    VARIANTS=${GPU_CHECK_VARIANTS:-fit,timm,timm_cl,fit_cudnn,loader}
    THREADS=${GPU_CHECK_THREADS:-0}   # 0 = all usable cores
fi
MODELS=${GPU_CHECK_MODELS:-efficientnet_lite0,swin_tiny_patch4_window7_224}
BUDGET=${GPU_CHECK_BUDGET:-250}
TIMEOUT=${GPU_CHECK_TIMEOUT:-295}

export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# fail in seconds, not minutes, when the machine lacks something the benchmark imports
"$PY" - "$DEVICE" <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "timm", "numpy", "pandas", "sklearn", "tqdm", "PIL"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)}")
import timm, torch
where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"gpu_check: torch {torch.__version__}, timm {timm.__version__}, {where}", flush=True)
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_check: GPU_CHECK_DEVICE=cuda but torch sees no CUDA device")
EOF

start=$(date +%s)
timeout --kill-after=10 "$TIMEOUT" "$PY" benchmarks/train_throughput.py --synthetic --device "$DEVICE" \
    --models "$MODELS" --pretrained auto --amp bf16 --steps "$STEPS" --warmup "$WARMUP" \
    --batch-size "$BATCH" --img-size "$IMG" --workers "$WORKERS" --variants "$VARIANTS" --threads "$THREADS" \
    --time-budget "$BUDGET"
echo "gpu_check: done in $(( $(date +%s) - start )) s (device $DEVICE, batch $BATCH, ${IMG}px, $STEPS timed steps)"
