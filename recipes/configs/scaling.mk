# The paper's two curves on the CPU shop world (`make -C recipes scaling`): data efficiency (1/8 .. all of 1,000
# expert trajectories) and branching factor (K = 1 .. 8 at 1/8 of the data), IL / IWM / SR, 3 seeds, every run
# 3,000 updates from one pretrained base per seed (the shared language prior of configs/prior.mk).
include configs/demo.mk
OUT            = out/scaling
FULL_N         = 1000
FRACTIONS      = 8 4 2 1
KS             = 1 2 4 8
K_AT           = 8
K_IWM          = 8
K_SR           = 3
STEPS          = 3000
# the budget is STEPS updates for every run (equal compute across the curve), not demo.mk's EPOCHS, which would
# otherwise apply: an inherited EPOCHS wins over a STEPS set in a config (recipes/Makefile, BUDGET)
EPOCHS         =
SEEDS          = 0 1 2
PRETRAIN_STEPS = 1000
N_EVAL         = 200
SCALE_OUT      = $(OUT)
# validation trajectories held out from every point (the recipe's VAL_N; 20 elsewhere)
VAL_N          = 200
