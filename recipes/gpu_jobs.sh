#!/bin/sh
# How many fine-tunes fit side by side on this machine's NVIDIA GPU: four fifths of its memory (the fifth left over
# is for the allocator's fragmentation and what the estimate misses, as eexp.training.model.CHECKPOINT_ABOVE) divided
# by $1, one run's GiB; at least 1. Prints nothing where nvidia-smi is missing or lists no GPU (a CPU-only machine).
# The first GPU is the one counted: it is where each run's CUDA device 0 lives.
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -d ' ')
case $mib in '' | *[!0-9]*) exit 0 ;; esac
jobs=$((mib * 4 / 5 / ($1 * 1024)))
echo $((jobs > 0 ? jobs : 1))
