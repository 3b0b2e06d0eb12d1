# The CPU demo (`make -C recipes demo`): the built-in shop world, a `small` model made from scratch (3.3M
# parameters), 2 cores, no downloads. Sized to finish in about 20 minutes; see README.md for what it measured.
ENV       = shop
OUT       = out/demo
SIZE      = small
# few demonstrations and several world-model transitions per state: the regime where IWM can matter
N_EXPERT  = 100
K_IWM     = 3
K_SR      = 3
STEPS     = 400
BATCH     = 8
LR        = 1e-3
# shop pages carry what a decision needs (the query, the selected options, the buttons), so neither history nor
# the admissible list is shown: a third fewer tokens per example. Actions are still ranked among the admissible ones.
DATA_ARGS = --history 0 --no-admissible
# actions ranked by likelihood among the admissible ones (free text from a model this small is mostly invalid)
ACT       = score
N_EVAL    = 200
SPLITS    = test ood
EVAL_ARGS = --max-steps 10
JOBS      = 2
