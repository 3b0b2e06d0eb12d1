# ALFWorld's generated games with a model made from scratch, on 2 CPU cores (issue 63): the demo's `tiny` model (0.1M
# parameters, its tokenizer trained on the expert data), no GPU and no download. One seed's comparison:
#   make -C recipes -j2 CONFIG=configs/alfworld-tiny.mk compare          # SEED=0, in out/alfworld-tiny
# and over 10 seeds (one set of games, made once; each seed its own expert order, data, base and runs):
#   make -C recipes -j2 CONFIG=configs/alfworld-tiny.mk seeds SEEDS="0 1 2 3 4 5 6 7 8 9"
# The games are `eexp alfworld-games`' (GAMES=generated): on ALFWorld's engine, not the released split. The
# calibration that chose these settings (IL against random on every game of valid_seen and valid_unseen) and what it
# measured: docs/results/alfworld.md. The calibration's IL alone is two of the compare's files:
#   make -C recipes -j2 CONFIG=configs/alfworld-tiny.mk out/alfworld-tiny/eval/IL.jsonl out/alfworld-tiny/eval/random.jsonl
GAMES = generated
OUT = out/alfworld-tiny
include configs/alfworld.mk
# the default games (600 train, every valid_seen and valid_unseen game: 140 and 134), as the calibration: the seed's
# first N_EXPERT train games trained on, the VAL_N after them held out for the validation curve
N_EXPERT  = 560
VAL_N     = 40
SIZE      = tiny
LR        = 3e-3
BATCH     = 8
# The calibration: IL at 10 epochs won 5.0% of valid_seen, at 30 epochs 9.3% and, with another data-order seed, 28.6%
# (held-out loss lowest mid-run and higher at the end, as in the demo: the loss is a poor guide to success here)
EPOCHS    = 30
# The paper's ALFWorld prompt, as configs/alfworld-smollm2.mk: the goal, the current observation and the 10 previous
# actions, each with the first 60 characters of its observation; no admissible list in the prompt (actions are
# ranked by likelihood among the admissible ones, ACT = score)
DATA_ARGS = --history 10 --max-history-chars 60 --no-admissible
# 30 steps an episode (the walkthroughs take 15 on average), as the SmolLM2 calibration
EVAL_ARGS = --max-steps 30
# the rows of the issue: IL, IWM, SR, the compute-matched controls (at EPOCHS: IL@SR, IL@IWM, IWM@IL) and random,
# with SR also evaluated choosing its action as IL does (SR~score), since a model this small may write no thought
THINK_ROWS =
SCORE_ROWS = SR
ACTOBS_ROW =
RECOVERY_N =
RESULTS   = ../docs/results/alfworld-tiny
RESULTS_PAGE = ../docs/results/alfworld.md
# the fine-tunes side by side (make -j2), one thread each
export OMP_NUM_THREADS = 1
