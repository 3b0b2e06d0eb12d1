#!/bin/bash
# Issue 53: world-model accuracy of SmolLM2-135M-Instruct checkpoints on the demo's 96 held-out shop transitions
# (../heldout24.jsonl.gz), asked with the SmolLM2 recipe's serializer (its DATA_ARGS), greedy, through llama-server.
#   docs/results/world-model/smollm2/run.sh base IL@SR-s0 IL@SR-s1 IL@SR-s2 IL-s2 WM-s2 IWM-s2
# run from the repository root with the venv active; OUT: the SmolLM2 recipe's output root (recipes/out/smollm2),
# where seed<s>/IL@SR.q8_0.gguf and seed<s>/base are. Writes RUN.jsonl and RUN.summary.json into WORK.
# WM-s<s> is seed s's IWM at the end of its world-model phase: seed<s>/WM, the adapter phase_adapter.py writes from
# the IWM run's checkpoint at that update, exported here as the recipe exports its runs.
set -e
OUT=${OUT:-recipes/out/smollm2}
WORK=${WORK:-out/world-model-smollm2}
mkdir -p "$WORK"
gunzip -c docs/results/world-model/heldout24.jsonl.gz > "$WORK/heldout24.jsonl"
# the base as the fine-tunes are exported (q8_0 from the imported checkpoint), not the package's Q4_1 GGUF
[ -f "$WORK/base.q8_0.gguf" ] || eexp export "$OUT/seed2/base" --quant q8_0 -o "$WORK/base.q8_0.gguf"
for run in "$@"; do
  case $run in
    base) model=$WORK/base.q8_0.gguf;;
    IL@SR-s*) model=$OUT/seed${run#IL@SR-s}/IL@SR.q8_0.gguf;;
    IL-s*) model=$OUT/seed${run#IL-s}/IL.q8_0.gguf;;
    IWM-s*) model=$OUT/seed${run#IWM-s}/IWM.q8_0.gguf;;
    WM-s*) model=$OUT/seed${run#WM-s}/WM.q8_0.gguf
      [ -f "$model" ] || eexp export "$OUT/seed${run#WM-s}/WM" --quant q8_0 -o "$model";;
    *) echo "run.sh: unknown run $run" >&2; exit 1;;
  esac
  [ -f "$WORK/$run.summary.json" ] && continue
  python tests/llama_server.py run "$model" --parallel 8 --threads "${THREADS:-1}" --log "$WORK/$run.server.log" -- \
    eexp world-model-eval --concurrency 8 --history 10 --max-history-chars 40 --no-admissible --max-tokens 200 -q \
      "$WORK/heldout24.jsonl" -o "$WORK/$run.jsonl.part" --summary "$WORK/$run.summary.json.part"
  mv "$WORK/$run.jsonl.part" "$WORK/$run.jsonl" && mv "$WORK/$run.summary.json.part" "$WORK/$run.summary.json"
done
