# As gpu-instruct.mk, with LoRA adapters (the paper's choice for 70B models; the same adapter continues from the IWM
# warm-up into IL). Evaluate the adapter directory directly, or merge it to GGUF: eexp export BASE --adapter OUT/IWM.
#   make -C recipes CONFIG=configs/gpu-instruct-lora.mk MODEL=$HOME/models/Qwen2.5-1.5B-Instruct \
#        POLICY=$HOME/models/qwen2.5-1.5b-instruct-q8_0.gguf ENV=shop compare
include configs/gpu-instruct.mk
LR         = 1e-4
TRAIN_ARGS = --lora --lora-rank 16 --lora-alpha 32 --grad-accum 4 --max-length 2048
OUT        = out/gpu-instruct-lora/$(ENV)
