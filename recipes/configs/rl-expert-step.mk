# Expert-step RL before outcome RL on CPU (`make -C recipes rl-expert-step`): the full-data demo's IL checkpoint of seed
# 0 and an early IL (ES_EARLY_STEPS updates), then from each: outcome RL, expert-step RL, and outcome RL after
# expert-step, three seeds each, evaluated after. The outcome settings are configs/rl.mk's (40 steps of 4 tasks x 8
# episodes).
include configs/rl.mk
ES_STARTS      = IL IL-early
# expert-step: 40 steps of 4 expert states x 8 actions (1,280 actions, no episode), the demo's expert data
ES_STEPS       = 40
ES_MATCH       = exact
# the IL models are confident: at temperature 1 the 8 actions at a state mostly agree and a group that agrees
# teaches nothing (the tests' tiny IL model on 11 expert states: 15 steps left its greedy match with the expert at
# 0.27 at temperature 1, and raised it to 0.45 at temperature 3)
ES_TEMP        = 3
# an IL this early is meant to be a start whose sampled episodes never succeed, where plain outcome RL refuses
# (its probe decides, and the compare step says which runs were refused: on 3 of 3 seeds it was, 0 of 32,
# docs/results/signals.md)
ES_EARLY_STEPS = 300
