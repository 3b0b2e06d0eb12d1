# Included by ../Makefile, whose settings it reads; `make -n -C recipes TARGET` prints what a target runs.

# --- the seed documents' other signals (issue 30), beside IL, IWM and SR ---------------------------------------------
# `make -C recipes signals` (configs/signals.mk): per seed, on the base IL, IWM and SR share,
#   DPO          IL for all but DPO_STEPS of IL's updates, then DPO_STEPS of DPO on preference pairs (the expert's
#                action chosen over each executed IWM alternative): IL's update budget, DPO its last quarter;
#   IL+critic    IL, each action chosen by a critic (the base fine-tuned at the recipe's budget, BUDGET, on
#                critic-data of the IWM outcomes) among CRITIC_K proposals;
#   IL+reflexion IL with ATTEMPTS attempts per task and Reflexion memory (success within ATTEMPTS);
#   IL-curated, IWM-curated   IL and IWM on N_EXPERT trajectories chosen for coverage from CURATE_POOL (IL and IWM
#                are the seed's first N_EXPERT: a random choice of the same size);
# pooled over SEEDS by eval --compare against IL ($(OUT)/signals/compare.json). Expert-step RL has its own recipe
# (rl-expert-step).
# IL's updates: STEPS with a fixed budget; with EPOCHS they are known once IL has trained (its card.yaml), so IL-pre
# then waits for IL (IL_DONE)
IL_UPDATES    = $(if $(findstring --epochs,$(BUDGET)),$(call UPDATES_OF,IL),$(STEPS))
IL_DONE       = $(if $(findstring --epochs,$(BUDGET)),$(call MATCHED_TO,IL))
# DPO's updates (empty: a quarter of IL's, at least 1), and IL-pre's, the rest of IL's: shell arithmetic, in a recipe
DPO_STEPS    ?=
DPO_UPDATES   = $(or $(DPO_STEPS),$$(( $(IL_UPDATES) / 4 > 0 ? $(IL_UPDATES) / 4 : 1 )))
IL_PRE_UPDATES = $$(( $(IL_UPDATES) - $(DPO_UPDATES) > 0 ? $(IL_UPDATES) - $(DPO_UPDATES) : 1 ))
DPO_BETA     ?= 0.1
DPO_LR       ?= $(LR)
CRITIC_K     ?= 4
CRITIC_HELDOUT ?= 50
ATTEMPTS     ?= 3
SIGNAL_ROWS   = IL IWM SR DPO IL+critic IL+reflexion IL-curated IWM-curated
SIGNAL_FILES  = $(foreach r,IL IWM SR DPO IL+critic IL+reflexion,$(1)/eval/$(r).jsonl) \
                $(1)/curated/eval/IL.jsonl $(1)/curated/eval/IWM.jsonl $(foreach s,$(SPLITS),$(1)/critic_eval/$(s).json)
SIGNAL_FILE   = $(if $(filter %-curated,$(2)),$(1)/curated/eval/$(patsubst %-curated,%,$(2)).jsonl,$(1)/eval/$(2).jsonl)

$(OUT)/pairs.jsonl: $(OUT)/outcomes_iwm.jsonl
	$(EEXP) preference-data --rejected all $(DATA_ARGS) -q $< $(WHOLE)

$(OUT)/IL-pre/done: $(OUT)/il.jsonl $(MODEL)/config.json $(IL_DONE)
	$(FINETUNE) --max-steps $(IL_PRE_UPDATES) --lr $(LR) \
	  --batch-size $(BATCH) --seed $(SEED) -q $(TRAIN_ARGS) $< --model $(MODEL) -o $(OUT)/IL-pre && touch $@

$(OUT)/DPO/done: $(OUT)/pairs.jsonl $(OUT)/IL-pre/done
	$(FINETUNE) --objective dpo --beta $(DPO_BETA) --max-steps $(DPO_UPDATES) --lr $(DPO_LR) \
	  --batch-size $(BATCH) --seed $(SEED) -q $(TRAIN_ARGS) $< --model $(OUT)/IL-pre -o $(OUT)/DPO && touch $@

$(OUT)/critic.jsonl: $(OUT)/outcomes_iwm.jsonl
	$(EEXP) critic-data $(DATA_ARGS) -q $< $(WHOLE)

# no validation: the held-out examples (VAL) are IL's actions, not the critic's Yes/No verdicts
$(OUT)/critic/done: VAL :=
$(OUT)/critic/done: $(OUT)/critic.jsonl $(MODEL)/config.json
	$(TRAIN) $< --model $(MODEL) -o $(OUT)/critic && touch $@

# the critic's accuracy on held-out states: CRITIC_HELDOUT expert trajectories (expert's seeded sample) of a split whose
# tasks it never trained on (it trained on train states), CRITIC_K admissible alternatives executed at each state
$(OUT)/critic_eval/%.json: $(OUT)/critic/done
	@mkdir -p $(@D)
	$(EEXP) expert --env $(ENV) $(ENV_ARGS) --split $* -n $(CRITIC_HELDOUT) --seed $(SEED) -q \
	  | $(EEXP) branch --propose admissible -k $(CRITIC_K) --seed $(SEED) -q \
	  | $(EEXP) rollout $(WORKERS) -q | $(EEXP) critic-eval --critic $(OUT)/critic -q > $@.part
	mv $@.part $@

# IL with the critic, and IL with Reflexion: the IL model evaluated another way (one file per row, every split).
# $(2): how eval runs it, in-process by default; Reflexion goes through the server where the config has one
# (EVAL_RUN: SmolLM2's `make CONFIG=configs/smollm2.mk OUT=out/smollm2/seed1 SEED=1 out/smollm2/seed1/eval/IL+reflexion.jsonl`)
define EVAL_IL_WITH
	@mkdir -p $(OUT)/eval
	$(foreach s,$(SPLITS),$(or $(2),$(EEXP) eval --policy $(OUT)/IL $(WORKERS)) --env $(ENV) $(ENV_ARGS) --split $(s) \
	  -n $(N_EVAL) --act $(ACT) --seed $(SEED) -q $(EVAL_ARGS) $(1) -o $@.$(s).part --resume &&) true
	$(JOIN_EVAL_PARTS)
endef
$(OUT)/eval/IL+critic.jsonl: $(OUT)/IL/done $(OUT)/critic/done
	$(call EVAL_IL_WITH,--critic $(OUT)/critic --critic-k $(CRITIC_K))

$(OUT)/eval/IL+reflexion.jsonl: $(OUT)/IL/done $(if $(EXPORT),$(OUT)/IL.$(EXPORT).gguf)
	$(call EVAL_IL_WITH,--attempts $(ATTEMPTS) --memory reflexion,$(call EVAL_RUN,IL))

# IL and IWM on curated expert data, from the seed's base (one base for every row of a seed). Both in one sub-make
# (a grouped target): a sub-make per run, side by side under -j, built their shared expert.jsonl and il.jsonl at once,
# one reading the file the other was still writing (CI: "curated/expert.jsonl: empty file").
$(OUT)/curated/eval/IL.jsonl $(OUT)/curated/eval/IWM.jsonl &: $(MODEL)/config.json
	$(MAKE) OUT=$(OUT)/curated CURATE=coverage MODEL=$(abspath $(MODEL)) $(OUT)/curated/eval/IL.jsonl \
	  $(OUT)/curated/eval/IWM.jsonl

signals: install
	$(MAKE) -j3 signals-compare CONFIG=configs/signals.mk

SIGNAL_SEEDS = $(foreach s,$(SEEDS),signals-seed$(s))
.PHONY: signals signals-compare signals-seed%
signals-seed%:
	$(MAKE) OUT=$(OUT)/seed$* SEED=$* $(call SIGNAL_FILES,$(OUT)/seed$*)

signals-compare: $(SIGNAL_SEEDS)
	@mkdir -p $(OUT)/signals
	$(EEXP) eval --compare $(foreach r,$(SIGNAL_ROWS),$(r)=$(subst $(eval) ,$(comma),$(strip \
	  $(foreach s,$(SEEDS),$(call SIGNAL_FILE,$(OUT)/seed$(s),$(r)))))) --summary $(OUT)/signals/compare.json \
	  --plot $(OUT)/signals/compare.png
	@echo "results: $(OUT)/signals/compare.json, plot: $(OUT)/signals/compare.png"
