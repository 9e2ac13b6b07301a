#!/usr/bin/env bash
# Gather the wheels a partly provisioned, offline GPU box lacks, on a machine with network access.
#
#   bench/gpu_kit.sh [--python 3.12] [--platform manylinux_2_28_x86_64] [--out .gpu-kit]
#
# The box is assumed to have torch (CUDA build), transformers, peft, accelerate, numpy, safetensors,
# tokenizers, huggingface_hub. Everything else sft-tui and bench/gpu_check.py need is downloaded
# here with --no-deps, as binary wheels for the box's Python and platform, into two parts that are
# each under 64 MiB (one copy/carry each): part1 = pyarrow and its small friends (pyarrow alone is
# ~55 MB), part2 = bitsandbytes (~43 MB), pandas, TRL, datasets, Liger, Textual and the rest.
# On the GPU box (see README "Running the GPU check on an offline box"):
#   pip install --no-index --find-links .gpu-kit/part1 --find-links .gpu-kit/part2 -r .gpu-kit/requirements.txt
#   pip install --no-deps --no-build-isolation -e .     # sft-tui itself, from the checkout
set -euo pipefail
PY=3.12
PLAT=manylinux_2_28_x86_64
OUT=.gpu-kit
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2;;
    --platform) PLAT="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
LIMIT=$((64 * 1024 * 1024))
PART1="pyarrow==26.0.1 xxhash dill==0.4.1 multiprocess==0.70.19 fsspec filelock"
PART2="bitsandbytes==0.50.2 pandas python-dateutil pytz tzdata six trl==1.16.0 datasets==5.2.0 liger-kernel \
nvidia-ml-py textual rich markdown-it-py mdurl pygments platformdirs psutil pyyaml pydantic pydantic-core \
annotated-types typing-inspection typing-extensions linkify-it-py uc-micro-py"
PLATS="--platform $PLAT --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform any"
rm -rf "$OUT"
mkdir -p "$OUT/part1" "$OUT/part2"
for part in 1 2; do
  eval "pkgs=\$PART$part"
  # shellcheck disable=SC2086
  python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" $PLATS \
      -d "$OUT/part$part" $pkgs
done
: > "$OUT/requirements.txt"
for p in $PART1 $PART2; do echo "${p%%==*}" >> "$OUT/requirements.txt"; done
status=0
for part in 1 2; do
  size=$(du -sb "$OUT/part$part" | cut -f1)
  printf 'part%s: %6.1f MiB  (%s)\n' "$part" "$(echo "$size / 1048576" | bc -l)" "$OUT/part$part"
  ls -l "$OUT/part$part" | awk 'NR>1 {printf "   %8.1f MiB  %s\n", $5/1048576, $9}'
  if [ "$size" -ge "$LIMIT" ]; then echo "part$part is over 64 MiB" >&2; status=1; fi
done
total=$(du -sb "$OUT" | cut -f1)
printf 'total: %.1f MiB in %s (copy part1 and part2 separately where one copy is limited to 64 MiB)\n' \
  "$(echo "$total / 1048576" | bc -l)" "$OUT"
exit $status
