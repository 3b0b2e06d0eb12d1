# The full-data demo: the built-in shop world, 1,000 expert trajectories, a model made from scratch, 2 cores, no
# downloads, every run of the comparison (with the compute-matched rows: about an hour of both cores a seed):
#   make -C recipes -j2 seeds CONFIG=configs/demo.mk
# `make -C recipes demo` runs configs/lowdata.mk, which includes these settings, over 6 seeds. What each measured is
# in docs/results/demo.md.
ENV       = shop
# its own folder: `make demo` runs configs/lowdata.mk in out/demo, and make reuses every file a folder already has,
# so two configs in one folder would mix their runs without a word
OUT       = out/demo-full
# `tiny` (0.1M parameters) takes ~15x less compute per update than `small` (3.3M): at this budget many updates beat
# a wider model (small at 700 updates never left the results page alone; tiny at 8,000 did).
SIZE      = tiny
N_EXPERT  = 1000
K_IWM     = 3
K_SR      = 3
STEPS     = 8000
# The paper's budgets (issue 40): every run EPOCHS epochs of its own data. IL's ~4,670 examples (seed 0: 4,671) make
# 584 updates of 8 an epoch, so 14 epochs is ~8,180 updates, the 8,000 of STEPS before; SR trains IL + reflections
# for the same 14 epochs over the expert data (about twice IL's updates; before: 8,000, half its epochs over the
# expert data); IWM one epoch of world-model data, then IL's 14. STEPS given on make's command line still wins.
EPOCHS    = 14
BATCH     = 8
LR        = 3e-3
# shop pages carry what a decision needs (the query, the selected options, the buttons), so neither history nor
# the admissible list is shown: a third fewer tokens per example. Actions are still ranked among the admissible ones.
DATA_ARGS = --history 0 --no-admissible
# actions ranked by likelihood among the admissible ones (free text from a model this small is mostly invalid)
ACT       = score
N_EVAL    = 200
SPLITS    = test ood
EVAL_ARGS = --max-steps 10
JOBS      = 2
# The three fine-tunes run side by side (make -j3), one thread each: torch's threads spin against each other.
export OMP_NUM_THREADS = 1
