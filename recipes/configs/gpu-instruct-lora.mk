# As gpu-instruct.mk, with LoRA adapters (the paper's choice for 70B models; the same adapter continues from the IWM
# warm-up into IL). Evaluate the adapter directory directly, or merge it to GGUF: eexp export BASE --adapter OUT/IWM.
include configs/gpu-instruct.mk
LR         = 1e-4
TRAIN_ARGS = --lora --lora-rank 16 --lora-alpha 32 --grad-accum 4 --max-length 2048
