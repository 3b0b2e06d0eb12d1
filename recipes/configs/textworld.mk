# TextWorld (the engine ALFWorld is built on): cooking and treasure-hunting games made by tw-make on first use.
#   make -C recipes CONFIG=configs/textworld.mk compare
# ood = harder game families. Games are generated into $EEXP_CACHE the first time (seconds each).
ENV       = textworld
OUT       = out/textworld
ENV_ARGS  = --env-arg games=25
N_EXPERT  = 100
# every train task is an expert trajectory here, so none is left to hold out for validation (compare.mk's val.jsonl)
VAL_N     = 0
K_IWM     = 8
K_SR      = 3
STEPS     = 1500
N_EVAL    = 40
EVAL_ARGS = --max-steps 40
