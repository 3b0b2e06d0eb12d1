# The seed documents' other signals beside IL, IWM and SR (issue 30): DPO on the executed alternatives, a critic that
# reranks IL's proposals, Reflexion memory over 3 attempts, and IL and IWM on curated expert data, from the shared
# language prior at 1/8 of the expert data (configs/prior.mk), three seeds pooled against IL:
#   make -C recipes signals
# Expert-step RL before outcome RL has its own recipe: make -C recipes rl-expert-step.
include configs/prior.mk
OUT         = out/signals
SEEDS       = 0 1 2
# 1/8 of CURATE_POOL: the curated rows choose their N_EXPERT from the seed's first 1,000 train trajectories
# DPO: the last quarter of IL's updates (DPO_STEPS, mk/signals.mk's default), after the rest of them as IL
CURATE_POOL = 1000
DPO_BETA    = 0.1
CRITIC_K    = 4
ATTEMPTS    = 3
THINK_ROWS  =
ACTOBS_ROW  =
# publish (one seed at a time into RESULTS, as the SmolLM2 recipe does): every row's episodes, the training logs
PUBLISH_NEEDS = $(call SIGNAL_FILES,$(OUT))
PUBLISH_TRAIN = IL IWM SR IL-pre DPO critic curated/IL curated/IWM
