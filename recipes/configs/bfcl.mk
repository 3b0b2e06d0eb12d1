# BFCLv3 multi-turn (one of the paper's environments): train = 75% of multi_turn_base, test = the rest,
# ood = long-context, missing-function and missing-parameter conversations. Open action space: eval generates.
#   make -C recipes CONFIG=configs/bfcl.mk compare
ENV       = bfcl
OUT       = out/bfcl
N_EXPERT  = 150
# every train task is an expert trajectory here, so none is left to hold out for validation (compare.mk's val.jsonl)
VAL_N     = 0
K_IWM     = 8
K_SR      = 3
STEPS     = 1500
N_EVAL    = 50
ACT       = generate
# BFCL lists no admissible actions, so the alternatives of IWM and SR are the IL model's own samples
PROPOSER  = $(OUT)/IL
