# The paper's low-data regime on CPU, where its effect is largest (WebShop at 1/8 of the expert data: IL 25.8, IWM
# 38.3, SR 46.9): the demo's settings with 125 expert trajectories instead of 1,000 and 8 alternatives per state for
# IWM (the paper's K for WebShop). A seed takes minutes, so a claim can rest on several seeds:
#   make -C recipes -j2 seeds CONFIG=configs/lowdata.mk SEEDS="0 1 2 3 4"
# What it measured is in docs/results/lowdata.md.
include configs/demo.mk
OUT       = out/lowdata
N_EXPERT  = 125
K_IWM     = 8
# The paper's budgets (demo.mk's EPOCHS = 14: IL ~1,020 updates of 8, SR ~2,040, IWM one epoch of world-model data
# more), with the compute-matched rows IL@SR, IL@IWM and IWM@IL beside them (the Makefile's MATCHED_ROWS). 14 epochs
# is in the validation loss's floor for IL at this size: seed 0's IL trained 60 epochs reached its lowest validation
# loss at epoch 12 (0.367), stayed within 0.02 of it to epoch 21, then rose (0.50 by epoch 28). STEPS (a fixed budget
# for every run, when given on make's command line) and VAL_EVERY's default are STEPS = 3000.
STEPS     = 3000
# Splits: test, and combo (unseen combinations of words the train split has: shop.py). ood's unseen categories are
# out of a from-scratch model's vocabulary (0% for every method, 1,200 episodes of the demo), so they are left out.
SPLITS    = test combo
# the think rows repeat IL and IWM exactly at this size (the demo's first measurement), and cost the most eval time
THINK_ROWS =
