# ScienceWorld (one of the paper's environments; needs Java 17). Steps are slow (a JVM behind each), so rollout
# and eval use several workers and the admissible list shown to the model is trimmed (see eexp envs scienceworld).
#   make -C recipes CONFIG=configs/scienceworld.mk compare
ENV       = scienceworld
OUT       = out/scienceworld
ENV_ARGS  = --env-arg variations=5
N_EXPERT  = 100
# the paper's ScienceWorld IWM setting: 3 uniform admissible alternatives per state
K_IWM     = 3
K_SR      = 3
STEPS     = 2000
N_EVAL    = 50
JOBS      = 4
EVAL_ARGS = --max-steps 60
