#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 10, part 2, as one prepared run; everything lands in $OUT.
#
#   OUT=/tmp/gpu benchmarks/gpu_suite.sh                 # every step below, in order
#   OUT=/tmp/gpu benchmarks/gpu_suite.sh env tests scan  # some steps (each writes its own files)
#
# Steps: env (GPU, driver, torch/triton/mamba-ssm versions, `stylemamba doctor`: the compiled self-checks),
# tests (the Triton tests compiled on the GPU, plus the other kernel tests), scan (benchmarks/scan.py at
# grids 32/64/128, dim 512, d_state 16, K = 4, fp32 and bf16, with the copy bandwidth of the same run; and
# the temporal scan of 4-frame 32²/64² video chunks, fused Triton kernel against Triton over copies),
# stylefuse (the whole model at 1024 px, 4×128² and 16×128² latents, bf16, with the breakdown; then the
# non-scan parts under torch.compile with CUDA graphs), fit (512 px, SigLIP-base-sized encoder, SD-VAE-sized
# decoder and its tiny proxy). build-mamba is not in the default list: it builds mamba-ssm from the sdist
# named by MAMBA_SDIST (no network on the GPU machine) with its CUDA scan kept, for the comparison.
#
# Each step runs under `timeout $STEP_TIMEOUT` (default 300 s) so one hang cannot eat the others; the
# exact commands go to $OUT/commands.txt, each step's output to $OUT/<step>*.txt, and $OUT/summary.md
# gathers them all with the exit codes. Environment: PYTHON (default python), BATCH (scan batch, 2),
# REPEATS (timed runs, 20), MAMBA_SDIST, STEP_TIMEOUT. SMOKE=1 runs every step on the CPU at tiny sizes
# (Triton interpreted) to prove the script before spending GPU time on it.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:?set OUT to the folder that receives the results}"
PYTHON="${PYTHON:-python}"
BATCH="${BATCH:-2}"
REPEATS="${REPEATS:-20}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
if [ "${SMOKE:-0}" = 1 ]; then
    # the interpreted Triton scan would make the compile smoke run take many minutes: compile around torch's
    DEVICE=cpu GRIDS="8" TGRIDS="4" DIM=32 SIZES=64 FIT_SIZE=64 ENCODER=tiny REPEATS=1 BATCH=1 COMPILE_BACKEND=torch
    export TRITON_INTERPRET=1
else
    DEVICE=cuda GRIDS="32 64 128" TGRIDS="32 64" DIM=512 SIZES=1024 FIT_SIZE=512 ENCODER=base COMPILE_BACKEND=triton
fi
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env tests scan stylefuse fit)
mkdir -p "$OUT"
cd "$ROOT" || exit 1

# The pack imports as comfyui_stylemamba: without an installed copy, point that name at this checkout.
if ! "$PYTHON" -c "import comfyui_stylemamba" 2>/dev/null; then
    PACKAGE_DIR="$(mktemp -d)"
    ln -s "$ROOT" "$PACKAGE_DIR/comfyui_stylemamba"
    export PYTHONPATH="$PACKAGE_DIR${PYTHONPATH:+:$PYTHONPATH}"
fi

# fit.py needs a content photo: the shared one when this checkout has it, else a synthetic one.
PHOTO="$ROOT/../shared/assets/images/boat.jpg"
if [ ! -f "$PHOTO" ]; then
    PHOTO="$OUT/synthetic_content.png"
    "$PYTHON" - "$PHOTO" <<'EOF'
import sys
import torch
from PIL import Image
torch.manual_seed(0)
smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=(512, 512), mode="bicubic").clamp(0, 1)
pixels = (smooth[0].permute(1, 2, 0) * 255).round().byte().numpy()
Image.fromarray(pixels).save(sys.argv[1])
EOF
fi

declare -A RC
NAMES=()
run() {  # run STEP_FILE COMMAND...: log the exact command, keep stdout+stderr, remember the exit code
    local name="$1"; shift
    NAMES+=("$name")
    echo "$*" >> "$OUT/commands.txt"
    echo "== $name: $*" >&2
    timeout "$STEP_TIMEOUT" "$@" > "$OUT/$name.txt" 2>&1
    RC[$name]=$?
    echo "   exit ${RC[$name]}" >&2
}

for step in "${STEPS[@]}"; do
    case "$step" in
    env)
        run nvidia-smi nvidia-smi
        run versions "$PYTHON" -c "import sys, torch, importlib.metadata as m
print('python', sys.version.split()[0]); print('torch', torch.__version__, 'CUDA', torch.version.cuda)
for d in ('triton', 'mamba-ssm', 'causal-conv1d'):
    try: print(d, m.version(d))
    except m.PackageNotFoundError: print(d, 'not installed')
print('GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
        run doctor "$PYTHON" -m comfyui_stylemamba doctor --device "$DEVICE" --dtype float32 bfloat16
        ;;
    tests)
        run tests-triton-compiled env STYLEMAMBA_TRITON_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -rs tests/test_kernels_triton.py
        run tests-kernels "$PYTHON" -m pytest -q -rs tests/test_kernels.py tests/test_kernels_self_check.py tests/test_cli_doctor.py
        ;;
    scan)
        for dtype in float32 bfloat16; do
            # shellcheck disable=SC2086  # GRIDS and TGRIDS are lists of sizes
            run "scan-$DEVICE-$dtype" "$PYTHON" benchmarks/scan.py --device "$DEVICE" --grids-1d --grids-2d $GRIDS \
                --grids-temporal $TGRIDS --frames 4 \
                --dim "$DIM" --d-state 16 --directions 4 --batch "$BATCH" --dtype "$dtype" \
                --backends torch triton mamba_ssm --warmup 3 --repeats "$REPEATS"
        done
        ;;
    stylefuse)
        run "stylefuse-$DEVICE-bf16" "$PYTHON" benchmarks/stylefuse.py --device "$DEVICE" --sizes "$SIZES" --channels 4 16 \
            --dtype bfloat16 --backends torch triton mamba_ssm --breakdown --repeats "$REPEATS"
        run "stylefuse-$DEVICE-bf16-compiled" "$PYTHON" benchmarks/stylefuse.py --device "$DEVICE" --sizes "$SIZES" \
            --channels 4 16 --dtype bfloat16 --backends "$COMPILE_BACKEND" --compile none default reduce-overhead \
            --repeats "$REPEATS"
        ;;
    fit)
        for decoder in sd-vae taesd; do
            run "fit-$DEVICE-$decoder" "$PYTHON" benchmarks/fit.py --device "$DEVICE" --size "$FIT_SIZE" \
                --encoder "$ENCODER" --decoder "$decoder" --iterations 6 --image "$PHOTO"
        done
        ;;
    build-mamba)
        if [ -z "${MAMBA_SDIST:-}" ]; then
            echo "build-mamba: set MAMBA_SDIST to a mamba_ssm sdist (.tar.gz); the GPU machine has no network" \
                > "$OUT/build-mamba.txt"
            RC[build-mamba]=2
            NAMES+=(build-mamba)
        else
            run build-mamba env MAMBA_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 \
                MAX_JOBS="$(nproc)" "$PYTHON" -m pip install --no-build-isolation --no-deps -v "$MAMBA_SDIST"
        fi
        ;;
    *)
        echo "unknown step '$step' (env, tests, scan, stylefuse, fit, build-mamba)" >&2
        exit 2
        ;;
    esac
done

{
    echo "# GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'), steps: ${STEPS[*]}"
    echo
    echo "Commands (in order) are in commands.txt; exit code per output file:"
    echo
    for name in "${NAMES[@]}"; do echo "- $name: exit ${RC[$name]}"; done
    for file in "$OUT"/*.txt; do
        [ "$(basename "$file")" = commands.txt ] && continue
        printf '\n## %s\n\n```\n' "$(basename "$file" .txt)"
        # drop tqdm's carriage-return progress lines
        tr '\r' '\n' < "$file" | grep -v -E '(it|run)/s\]|s/(it|run)\]|^ *$' | tail -n 200
        printf '```\n'
    done
} > "$OUT/summary.md"
echo "results in $OUT (summary.md)" >&2
