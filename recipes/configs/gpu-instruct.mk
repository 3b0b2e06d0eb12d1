# A GPU workstation with a real instruct model you already have on disk, e.g. Qwen2.5-0.5B/1.5B-Instruct or
# Llama-3.2-1B/3B-Instruct as a transformers checkpoint, and its GGUF for cheap rollouts (eexp export makes one).
#   make -C recipes CONFIG=configs/gpu-instruct.mk MODEL=$HOME/models/Qwen2.5-1.5B-Instruct \
#        POLICY=$HOME/models/qwen2.5-1.5b-instruct-q8_0.gguf ENV=shop compare
# The initial model proposes the SR alternatives and writes its own reflections (the paper's "self" setting).
# Fine-tuning is full (the paper's default) at the paper's learning rate; for LoRA use configs/gpu-instruct-lora.mk.
REFLECTOR  = self
LR         = 1e-5
BATCH      = 4
# The paper's budgets (recipes/Makefile, EPOCHS): IL EPOCHS epochs of the expert data; SR the same epochs over expert
# data + reflections (about twice IL's updates); IWM one epoch of world-model data, then IL's epochs. The paper's
# appendix gives 1-6 epochs per environment (ALFWorld and WebArena 2, SearchQA 3, TravelPlanner 5, Tau-Bench 6); 3
# epochs of the ~2,400 IL examples of 500 shop trajectories at 16 an update are ~450 updates (before issue 40 every
# run had 2000, ~13 epochs of IL and ~6 of SR's expert data). Each run's card.yaml records its updates and epochs.
EPOCHS     = 3
N_EXPERT   = 500
K_IWM      = 8
K_SR       = 3
N_EVAL     = 200
TRAIN_ARGS = --full --grad-accum 4 --max-length 2048
ACT        = constrained
# The state gives the previous actions, as the paper's WebShop and ALFWorld prompts do: the last 10 steps (every step
# of a shop episode), each with its page clipped to 300 characters (the serializer's default, which these recipes used
# with --history 3 before issue 40). Measured with SmolLM2's tokenizer on the 186 IL examples of 40 shop expert
# trajectories (seed 0), admissible list shown: it adds 108 tokens a state on average (median 108, 90th percentile
# 262, at most 372) to the 129 (at most 176) of the user turn without history, well within --max-length 2048;
# --history 3 added 104 (at most 274).
DATA_ARGS  = --history 10
# a folder of its own per environment (make reuses every file a folder has: configs/gpu-instruct-lora.mk's runs, or the
# default recipe's, must not stand in for these)
OUT        = out/gpu-instruct/$(ENV)
