# The issue's goal on TextWorld: IL, IWM and SR at 1/8 of the expert data, from one shared language prior per seed,
# 3 seeds pooled (`make -C recipes -j3 seeds CONFIG=configs/textworld-lowdata.mk`). Full data is one walkthrough per
# train game (100 games, configs/textworld.mk); 1/8 of it is 13. The tiny model of the shop demo, since the small one
# costs ~15x more per update; its prior is pretrained on the pages of random walks over the train games (the test and
# ood games, all of which eval plays, are never walked). What it measured is in docs/results/textworld-lowdata.md.
include configs/textworld.mk
OUT            = out/textworld-lowdata
N_EXPERT       = 13
# the other 87 train games leave VAL_N to hold out (textworld.mk, whose expert data is every game, has none)
VAL_N          = 20
SIZE           = tiny
STEPS          = 1500
BATCH          = 8
LR             = 3e-3
PRETRAIN_STEPS = 1000
CORPUS_WALKS   = 500
# eval plays all 40 test and 30 ood games, so only the train worlds are walked
CORPUS_ARGS    = --split train
# one row per method: no think rows, no ActObs (the shop tables have them)
THINK_ROWS     =
ACTOBS_ROW     =
export OMP_NUM_THREADS = 1
