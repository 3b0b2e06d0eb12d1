# MiniWoB++ web tasks in a real headless Chromium (needs ./install.sh --browser): 23 task types in train and test,
# 4 held-out task types in ood, a tiny model made from scratch, sized for 2 CPU cores. One run is noise:
#   make -C recipes -j3 seeds CONFIG=configs/miniwob.mk
# Every rollout alternative is reached by replay on a fresh page (~0.2 s each), so K and N are kept small.
ENV       = miniwob
OUT       = out/miniwob
# 4 seeds of every task type per split: train 92 tasks, test 92, ood 16
ENV_ARGS  = --env-arg train_seeds=4 --env-arg test_seeds=4
SIZE      = tiny
N_EXPERT  = 92
# every train task is an expert trajectory here, so none is left to hold out for validation (compare.mk's val.jsonl)
VAL_N     = 0
K_IWM     = 3
K_SR      = 2
STEPS     = 2000
BATCH     = 8
LR        = 3e-3
# the page carries the state (typed values, checked boxes, focus): no history; actions are ranked among the
# admissible ones (clicks, selects, the instruction's quoted texts typed into each field), which are not shown
DATA_ARGS = --history 0 --no-admissible
ACT       = score
N_EVAL    = 92
SPLITS    = test ood
EVAL_ARGS = --max-steps 8
JOBS      = 2
THINK_ROWS =
ACTOBS_ROW =
# the three fine-tunes run side by side (make -j3), one thread each
export OMP_NUM_THREADS = 1
