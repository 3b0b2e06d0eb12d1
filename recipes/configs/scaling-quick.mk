# The scaling curves at a size that fits 30 minutes on 2 cores (`make -C recipes scaling-quick`): the same design
# as configs/scaling.mk with 400 trajectories at full data, 600 updates a run, 100 test and ood episodes, and two
# points per curve. It shows the recipe works end to end and the shape of the curves; at this size the
# differences between methods are mostly within the seed spread. The full `scaling` is the evidence.
include configs/scaling.mk
OUT            = out/scaling-quick
FULL_N         = 400
FRACTIONS      = 8 1
KS             = 1 8
STEPS          = 600
PRETRAIN_STEPS = 300
CORPUS_WALKS   = 500
N_EVAL         = 100
# validation trajectories held out from every point (the recipe's VAL_N; 20 elsewhere)
VAL_N          = 200
