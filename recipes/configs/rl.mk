# RL from early-experience checkpoints on CPU (`make -C recipes rl`): the IL, IWM and SR checkpoints of seed 0 of the
# full-data demo (configs/demo.mk: made first if missing), then GRPO from each with one budget and three seeds,
# evaluated after.
include configs/demo.mk
# the checkpoints of one run: configs/demo.mk's seed 0 (`make -C recipes -j2 seeds CONFIG=configs/demo.mk` makes it,
# or this recipe does; `OUT=out/demo-full/seed1 SEED=1` starts from seed 1's)
OUT       = out/demo-full/seed0
# 40 RL steps x 4 tasks x 8 episodes = 1,280 sampled episodes per run, 9 runs; one on-policy update per step
RL_STEPS  = 40
RL_G      = 8
RL_TASKS  = 4
RL_SEEDS  = 0 1 2
# the tiny from-scratch model needs a high rate (the supervised runs used 3e-3)
RL_LR     = 1e-4
# WebShop's graded reward (attributes, options, price matched): at this size sampled episodes rarely succeed
# outright, and a success-only reward would leave most groups without signal
RL_REWARD = score
RL_ARGS   = --episode-steps 10
