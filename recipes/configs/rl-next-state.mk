# Next-state RL (RWML) before outcome RL on CPU (`make -C recipes rl-next-state`): the full-data demo's IWM checkpoint
# of seed 0 (configs/rl.mk's start, made first if missing), then from it: outcome RL, next-state RL, and outcome RL
# after next-state RL, three seeds each, evaluated on the test split, and the world-model accuracy of the start and of
# every run on held-out outcomes of test tasks. The outcome settings are configs/rl.mk's (40 steps of 4 tasks x 8
# episodes).
include configs/rl.mk
NS_STARTS = IWM
# next-state: 40 steps of 4 transitions x 8 predictions (1,280 predictions, no episode), from the IWM data's outcomes
NS_STEPS  = 40
# the longest next page of the demo's held-out outcomes is 75 tokens of the tiny tokenizer, its label included
NS_TOKENS = 80
# ood stays at 0% for every start before and after RL (docs/results/rl.md), so only test is evaluated
SPLITS    = test
