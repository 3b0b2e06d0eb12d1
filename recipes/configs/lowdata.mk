# The paper's low-data regime on CPU, where its effect is largest (WebShop at 1/8 of the expert data: IL 25.8, IWM
# 38.3, SR 46.9): the demo's settings with 125 expert trajectories instead of 1,000, 8 alternatives per state for
# IWM (the paper's K for WebShop), 3,000 updates. One run is noise, so run it per seed and pool:
#   make -C recipes -j3 seeds CONFIG=configs/lowdata.mk
# What it measured is in README.md ("Demo results").
include configs/demo.mk
OUT       = out/lowdata
N_EXPERT  = 125
K_IWM     = 8
STEPS     = 3000
