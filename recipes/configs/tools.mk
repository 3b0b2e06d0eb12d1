# The built-in BFCL-like tool world: fast and offline, an open action space (eval generates calls).
#   make -C recipes CONFIG=configs/tools.mk compare
ENV       = tools
OUT       = out/tools
N_EXPERT  = 200
K_IWM     = 6
STEPS     = 1000
ACT       = generate
