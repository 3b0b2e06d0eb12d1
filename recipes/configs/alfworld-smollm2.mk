# SmolLM2-135M-Instruct on ALFWorld's generated games (issue 52): the comparison the calibration in
# docs/results/alfworld.md calls for, sized for a GPU (on 2 CPU cores a LoRA fine-tune here runs at 110-129 tokens a
# second: IL's 2 epochs take about 3.4 hours a seed, IWM's world-model epoch about 15 more).
#   make -C recipes CONFIG=configs/alfworld-smollm2.mk compare          # one seed (SEED=0), in out/alfworld-smollm2
# The games are `eexp alfworld-games`' (GAMES=generated): generated on ALFWorld's engine, not the released split;
# with alfworld-download's data in ALFWORLD_DATA, GAMES=real uses that instead. The calibration alone (IL against
# random on valid_seen and valid_unseen) is two of the compare's files:
#   make -C recipes CONFIG=configs/alfworld-smollm2.mk out/alfworld-smollm2/eval/IL.jsonl out/alfworld-smollm2/eval/random.jsonl
# What it measured: docs/results/alfworld.md.
GAMES = generated
include configs/smollm2.mk
# smollm2.mk's rule makes the GGUF under the OUT of that moment (its own, or the command line's): keep that path
SMOLLM2 := $(SMOLLM2)
# before alfworld.mk, whose rules for the games are made for the OUT it finds (it sets its own only where none is)
OUT = out/alfworld-smollm2
include configs/alfworld.mk
# A GPU-session scale: 200 train games (the seed's first N_EXPERT trained on, the VAL_N after them held out for the
# validation curve), and 60 games in each evaluation split (the released splits have 140 and 134).
GAMES_TRAIN        = 200
GAMES_VALID_SEEN   = 60
GAMES_VALID_UNSEEN = 60
N_EXPERT  = 180
VAL_N     = 20
VAL_EVERY = 86
# SmolLM2's LoRA recipe (configs/smollm2.mk: lr 2e-4, updates of 8), for EPOCHS epochs of the 180 games' ~2,750 IL
# examples (344 updates an epoch). In the calibration the held-out loss at lr 2e-4 fell to 0.16 by update 430-516
# (1.25-1.5 epochs) and rose a little after (0.170 at 602), so 2 epochs; the run evaluated there (28% of valid_seen)
# was its checkpoint of update 500 (of a 4-epoch schedule stopped at update 620-630).
EPOCHS    = 2
# every game of both evaluation splits: alfworld.mk's N_EVAL (a prefix of a split would leave task types out)
N_EVAL    = 140
# The paper's ALFWorld prompt: the goal, the current observation and the previous actions. The admissible actions
# are not listed (llama.cpp's grammar constrains the action to them, as for shop); each earlier step keeps the first
# 60 characters of its observation, enough for "You arrive at countertop 1. On the countertop 1, you see".
DATA_ARGS = --history 10 --max-history-chars 60 --no-admissible
# 30 steps an episode instead of ALFWorld's 50: the walkthroughs of these games take 15 on average (at most 81 in train)
EVAL_ARGS = --max-steps 30
# no recovery test: eval --start off-path is shop's
RECOVERY_N =
RESULTS   = ../docs/results/alfworld-smollm2
RESULTS_PAGE = ../docs/results/alfworld.md
