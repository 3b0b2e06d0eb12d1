# ALFWorld, the paper's headline benchmark, through the real `alfworld` package (pip install 'eexp[alfworld]'). The
# default is the released games: `alfworld-download` once (it needs the internet), read from ALFWORLD_DATA
# (docs/install.md). A reduced size for one workstation: the paper trains on all 3,553 train games and evaluates on
# valid_seen (test, 140 games) and valid_unseen (ood, 134).
#   make -C recipes CONFIG=configs/alfworld.mk compare
# Without the download, GAMES=generated first writes games on ALFWorld's engine with `eexp alfworld-games` into
# $(OUT)/games (GAMES_TRAIN / GAMES_VALID_SEEN / GAMES_VALID_UNSEEN, GAMES_SEED; the release's sizes are 3553 / 140 /
# 134) and points ALFWORLD_DATA there; they are generated games, not the released split (docs/results/alfworld.md):
#   make -C recipes CONFIG=configs/alfworld.mk GAMES=generated compare
# The official notes: the gold walkthrough is the expert (the default), IWM executes every admissible alternative
# (5-15 a state; K_IWM=15 is exhaustive), SR uses 3 random admissible ones. A step costs ~40 ms of CPU and loading
# a game ~0.5 s (measured on the test games; 27 ms and 0.55 s on generated ones, whose generation takes ~1.9 s of CPU
# a game: the default sizes in ~25 minutes with JOBS=2); branching restores snapshots, so K alternatives cost K + 1
# steps a state.
ENV       = alfworld
OUT       ?= out/alfworld
N_EXPERT  = 200
K_IWM     = 8
K_SR      = 3
STEPS     = 1500
# every game of both splits (ood has 134; eval plays all a split has): a split's tasks are in path order, grouped by
# task type, and eval's -n takes the first n, so -n 50 of the released valid_seen would play its 13
# look_at_obj_in_light games, its 35 pick_and_place_simple and 2 of its other 92
N_EVAL    = 140
JOBS      = 2
EVAL_ARGS = --max-steps 50

# real: the games in ALFWORLD_DATA (alfworld-download's); generated: `eexp alfworld-games` writes them first
GAMES              ?= real
GAMES_TRAIN        ?= 600
GAMES_VALID_SEEN   ?= 140
GAMES_VALID_UNSEEN ?= 134
GAMES_SEED         ?= 0
ifeq ($(GAMES),generated)
# one folder for every seed of `seeds` (exported, so the seeds' makes keep the top OUT's)
GAMES_DIR ?= $(abspath $(OUT))/games
export GAMES_DIR
export ALFWORLD_DATA = $(GAMES_DIR)
# what reads the games before the expert data exists waits for them too (the rest comes after the expert data)
$(OUT)/expert.jsonl $(OUT)/val.jsonl $(OUT)/eval/random.jsonl $(OUT)/pages.jsonl: | $(GAMES_DIR)/eexp-games.json
SHARED_BY_SEEDS += $(GAMES_DIR)/eexp-games.json
# eexp-games.json is written last: without it, what is there is an interrupted run's, and is made again
$(GAMES_DIR)/eexp-games.json:
	rm -rf $(GAMES_DIR)/json_2.1.1 $(GAMES_DIR)/.json_2.1.1.*
	$(EEXP) alfworld-games $(GAMES_DIR) --train $(GAMES_TRAIN) --valid-seen $(GAMES_VALID_SEEN) \
	  --valid-unseen $(GAMES_VALID_UNSEEN) --seed $(GAMES_SEED) -j $(JOBS)
else ifneq ($(GAMES),real)
$(error GAMES must be real (the games in ALFWORLD_DATA) or generated (eexp alfworld-games), not '$(GAMES)')
endif
