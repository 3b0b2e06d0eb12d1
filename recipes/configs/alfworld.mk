# ALFWorld, the paper's headline benchmark, through the real `alfworld` package (pip install 'eexp[alfworld]'; the
# games from `alfworld-download`, read from ALFWORLD_DATA: docs/install.md). A reduced size for one workstation: the
# paper trains on all 3,553 train games and evaluates on valid_seen (test, 140 games) and valid_unseen (ood, 134).
#   make -C recipes CONFIG=configs/alfworld.mk compare
# The official notes: the gold walkthrough is the expert (the default), IWM executes every admissible alternative
# (5-15 a state; K_IWM=15 is exhaustive), SR uses 3 random admissible ones. A step costs ~40 ms of CPU and loading
# a game ~0.5 s (measured on the test games); branching restores snapshots, so K alternatives cost K + 1 steps a state.
ENV       = alfworld
OUT       = out/alfworld
N_EXPERT  = 200
K_IWM     = 8
K_SR      = 3
STEPS     = 1500
N_EVAL    = 50
JOBS      = 2
EVAL_ARGS = --max-steps 50
