# Included by ../Makefile, whose settings it reads; `make -n -C recipes TARGET` prints what a target runs.

# --- RL from the IL, IWM and SR checkpoints (paper §5.3, Fig. 3) ----------------------------------------------
# `make -C recipes rl`: configs/rl.mk (the demo's checkpoints, then one RL budget per start and seed). Every start
# gets the same `eexp rl` settings and the same seeds; only the initialization differs. Before = each start's eval,
# made in the RL folder; after = one eval per RL run; the table pools the seeds of each method (eval --compare
# NAME=FILES). Every file these recipes write is under RL_OUT: they read the checkpoints of OUT and write nothing
# there, so an RL config's SPLITS or N_EVAL never stand in a seed's own eval files for its config's.
# RL settings: steps, groups (episodes per task), tasks per step, seeds, learning rate, reward, extra options.
RL_STEPS  ?= 40
RL_G      ?= 8
RL_TASKS  ?= 4
RL_SEEDS  ?= 0 1 2
RL_LR     ?= 1e-4
RL_REWARD ?= score
RL_ARGS   ?=
RL_OUT    ?= $(OUT)/rl
RL_RUNS    = $(foreach m,IL IWM SR,$(foreach s,$(RL_SEEDS),$(m)-s$(s)))
RL_GROUP   = $(1)+RL=$(subst $(eval) ,$(comma),$(strip $(foreach s,$(RL_SEEDS),$(RL_OUT)/eval/$(1)-s$(s).jsonl)))

rl: install
	$(MAKE) -j3 rl-compare CONFIG=configs/rl.mk

rl-train: $(foreach r,$(RL_RUNS),$(RL_OUT)/$(r)/done)
rl-eval: $(foreach r,$(RL_RUNS),$(RL_OUT)/eval/$(r).jsonl)
rl-compare: $(RL_OUT)/compare.json

# $(RL_OUT)/IWM-s1/done: RL from $(OUT)/IWM with seed 1
.SECONDEXPANSION:
$(RL_OUT)/%/done: $(OUT)/$$(word 1,$$(subst -s, ,$$*))/done
	$(EEXP) rl --resume --model $(OUT)/$(word 1,$(subst -s, ,$*)) --env $(ENV) $(ENV_ARGS) -o $(RL_OUT)/$* \
	  --seed $(word 2,$(subst -s, ,$*)) --max-steps $(RL_STEPS) -G $(RL_G) --tasks-per-step $(RL_TASKS) \
	  --lr $(RL_LR) --reward $(RL_REWARD) --act $(call EVAL_ACT,$(word 1,$(subst -s, ,$*))) $(RL_ARGS) -q && touch $@

# The eval of policy $(1), acting with $(2), into $@: as compare.mk's (EVAL_SPLITS), each split into a part of its own
# with eval's --resume, joined when every split is done, so that an evaluation stopped part-way continues from its
# finished episodes when make runs again
define RL_EVAL
	@mkdir -p $(@D)
	$(foreach s,$(SPLITS),$(EEXP) eval --policy $(1) --env $(ENV) $(ENV_ARGS) --split $(s) -n $(N_EVAL) \
	  --act $(2) --seed $(SEED) -q $(EVAL_ARGS) -o $@.$(s).part --resume &&) true
	$(JOIN_EVAL_PARTS)
endef

$(RL_OUT)/eval/%.jsonl: $(RL_OUT)/%/done
	$(call RL_EVAL,$(RL_OUT)/$*,$(call EVAL_ACT,$(word 1,$(subst -s, ,$*))))

# each start, evaluated as its RL runs are (SPLITS, N_EVAL, greedy), into the RL folder
RL_START = $(RL_OUT)/eval/start/$(1).jsonl
$(RL_OUT)/eval/start/%.jsonl: $(OUT)/%/done
	$(call RL_EVAL,$(OUT)/$*,$(call EVAL_ACT,$*))

# before (the starts, greedy) and after RL (three seeds pooled per start)
$(RL_OUT)/compare.json: $(foreach r,IL IWM SR,$(call RL_START,$(r))) $(foreach r,$(RL_RUNS),$(RL_OUT)/eval/$(r).jsonl)
	$(EEXP) eval --compare $(foreach r,IL IWM SR,$(r)=$(call RL_START,$(r))) \
	  $(call RL_GROUP,IL) $(call RL_GROUP,IWM) $(call RL_GROUP,SR) --summary $@ --plot $(RL_OUT)/compare.png
	@echo "results: $@, plot: $(RL_OUT)/compare.png"

# --- expert-step RL, then outcome RL (issue #30 point 4) --------------------------------------------------------
# `make -C recipes rl-expert-step`: configs/rl-expert-step.mk. From each start S in ES_STARTS and seed s in RL_SEEDS,
# outcome RL with the rl section's settings (RL_STEPS, RL_G, RL_TASKS, RL_LR, RL_REWARD, RL_ARGS):
#   RL/S-s     outcome RL straight from S
#   ES/S-s     expert-step RL from S: actions sampled at the states of the expert data IL was trained on, each
#              rewarded by its match with the expert's (ES_MATCH), ES_STEPS steps of RL_TASKS states x RL_G actions
#   ES+RL/S-s  outcome RL from ES/S-s
# IL-early (IL after ES_EARLY_STEPS updates, the demo's settings otherwise) is meant as a start whose sampled
# episodes do not succeed, where plain outcome RL refuses (its 0% probe). An outcome run that is refused keeps the
# message in its folder's `refused` and its row is then its start, evaluated as is (a refused run trains nothing);
# compare names the refused runs. Expert-step never refuses.
ES_STARTS      ?= IL IL-early
ES_STEPS       ?= 40
ES_TEMP        ?= 1.0
ES_MATCH       ?= exact
ES_ARGS        ?=
ES_EARLY_STEPS ?= 300
ES_OUT         ?= $(RL_OUT)/expert-step
ES_ROWS         = $(foreach m,$(ES_STARTS),$(foreach k,RL ES ES+RL,$(foreach s,$(RL_SEEDS),$(k)/$(m)-s$(s))))
ES_GROUP        = $(2)=$(subst $(eval) ,$(comma),$(strip $(foreach s,$(RL_SEEDS),$(ES_OUT)/eval/$(1)-s$(s).jsonl)))

rl-expert-step: install
	$(MAKE) -j3 rl-es-compare CONFIG=configs/rl-expert-step.mk

rl-es-compare: $(ES_OUT)/compare.json
# the runs' done markers are made by pattern rules only to be prerequisites: kept, or make deletes them at the end as
# intermediate files and the next make has no record of which runs finished
.SECONDARY: $(foreach r,$(ES_ROWS),$(ES_OUT)/$(r)/done)

$(OUT)/IL-early/done: $(OUT)/il.jsonl $(MODEL)/config.json
	$(FINETUNE) $< --model $(MODEL) -o $(OUT)/IL-early --max-steps $(ES_EARLY_STEPS) --lr $(LR) \
	  --batch-size $(BATCH) --seed $(SEED) -q $(TRAIN_ARGS) && touch $@

# A staged run's folder is named START-sSEED (IL-s1): its start's name and its seed
STAGE_START_OF  = $(word 1,$(subst -s, ,$(notdir $(1))))
STAGE_SEED_OF   = $(word 2,$(subst -s, ,$(notdir $(1))))

# outcome RL from checkpoint $(1) into $(@D), seed and --act from the run's name; a refusal (exit 1 with the probe's
# message) leaves $(@D)/refused and $(@D)/start (the checkpoint its row evaluates); any other failure stops here. A
# stopped run continues from its checkpoint (--resume); an earlier refusal's files go first, or its row would
# evaluate the start in place of the run
define STAGED_OUTCOME_RUN
	rm -f $(@D).log $(@D)/refused $(@D)/start
	@mkdir -p $(dir $(@D))
	$(EEXP) rl --resume --model $(1) --env $(ENV) $(ENV_ARGS) -o $(@D) --seed $(call STAGE_SEED_OF,$(@D)) \
	  --max-steps $(RL_STEPS) -G $(RL_G) --tasks-per-step $(RL_TASKS) --lr $(RL_LR) --reward $(RL_REWARD) \
	  --act $(call EVAL_ACT,$(call STAGE_START_OF,$(@D))) $(RL_ARGS) -q 2> $(@D).log \
	  || { grep -q 'sampled episodes on .* succeeded' $(@D).log && mkdir -p $(@D) && mv $(@D).log $(@D)/refused \
	       && echo $(1) > $(@D)/start; } || { cat $(@D).log >&2; exit 1; }
	touch $@
endef

$(ES_OUT)/RL/%/done: $(OUT)/$$(call STAGE_START_OF,$$*)/done
	$(call STAGED_OUTCOME_RUN,$(OUT)/$(call STAGE_START_OF,$*))

$(ES_OUT)/ES+RL/%/done: $(ES_OUT)/ES/%/done
	$(call STAGED_OUTCOME_RUN,$(ES_OUT)/ES/$*)

$(ES_OUT)/ES/%/done: $(OUT)/$$(call STAGE_START_OF,$$*)/done $(OUT)/expert.jsonl
	$(EEXP) rl --resume --model $(OUT)/$(call STAGE_START_OF,$*) --env $(ENV) $(ENV_ARGS) -o $(@D) --seed $(call STAGE_SEED_OF,$*) \
	  --reward expert-step --expert $(OUT)/expert.jsonl --expert-match $(ES_MATCH) --temperature $(ES_TEMP) \
	  --max-steps $(ES_STEPS) -G $(RL_G) --tasks-per-step $(RL_TASKS) --lr $(RL_LR) \
	  --act $(call EVAL_ACT,$(call STAGE_START_OF,$*)) $(ES_ARGS) -q && touch $@

# the eval of a staged run ROOT/KIND/START-sSEED into ROOT/eval/KIND/START-sSEED.jsonl (for a refused outcome run,
# of its start), for ROOT the expert-step and the next-state sections' folders
define STAGED_EVAL_RULE
$(1)/eval/%.jsonl: $(1)/%/done
	$$(call RL_EVAL,$$$$(cat $(1)/$$*/start 2>/dev/null || echo $(1)/$$*),$$(call EVAL_ACT,$$(call STAGE_START_OF,$$*)))
endef
$(eval $(call STAGED_EVAL_RULE,$(ES_OUT)))

# each start (its greedy eval, in the RL folder), then its three rows, the seeds of each pooled
$(ES_OUT)/compare.json: $(foreach m,$(ES_STARTS),$(call RL_START,$(m))) \
  $(foreach r,$(ES_ROWS),$(ES_OUT)/eval/$(r).jsonl)
	$(EEXP) eval --compare $(foreach m,$(ES_STARTS),$(m)=$(call RL_START,$(m)) $(call ES_GROUP,RL/$(m),$(m)+RL) \
	  $(call ES_GROUP,ES/$(m),$(m)+ES) $(call ES_GROUP,ES+RL/$(m),$(m)+ES+RL)) --summary $@ --plot $(ES_OUT)/compare.png
	@for f in $(ES_OUT)/RL/*/refused $(ES_OUT)/ES+RL/*/refused; do test ! -f $$f || \
	  echo "$$(dirname $$f): refused at the probe, its row is its start $$(cat $$(dirname $$f)/start)"; done
	@echo "results: $@, plot: $(ES_OUT)/compare.png"

# --- next-state RL (RWML), then outcome RL (issue #53 point 4) -------------------------------------------------
# `make -C recipes rl-next-state`: configs/rl-next-state.mk. From each start S in NS_STARTS and seed s in RL_SEEDS,
# with the rl section's settings (RL_STEPS, RL_G, RL_TASKS, RL_LR, RL_REWARD, RL_ARGS):
#   RL/S-s     outcome RL straight from S
#   NS/S-s     next-state RL from S (eexp rl --reward next-state): at NS_TASKS transitions a step of the outcome
#              records S's world-model data was made from ($(OUT)/outcomes_iwm.jsonl: train tasks, the expert's
#              action and K_IWM alternatives at each state), RL_G predictions each at temperature 1, rewarded by
#              their token F1 with the recorded next observation; NS_STEPS steps, replies of NS_TOKENS tokens at most
#   NS+RL/S-s  outcome RL from NS/S-s (RWML's order: the world-model reward first, the task reward after)
# Besides each row's eval, the world-model accuracy (eexp world-model-eval) of each start and run on held-out outcomes
# of test tasks ($(NS_OUT)/heldout.jsonl: NS_HELDOUT expert trajectories, K_IWM admissible alternatives a state),
# so a reader sees whether the next-state reward taught the next state and whether outcome RL kept it.
NS_STARTS   ?= IWM
NS_STEPS    ?= 40
NS_TASKS    ?= $(RL_TASKS)
NS_TOKENS   ?= 80
NS_HELDOUT  ?= 20
NS_ARGS     ?=
NS_OUT      ?= $(RL_OUT)/next-state
NS_ROWS      = $(foreach m,$(NS_STARTS),$(foreach k,RL NS NS+RL,$(foreach s,$(RL_SEEDS),$(k)/$(m)-s$(s))))
NS_GROUP     = $(2)=$(subst $(eval) ,$(comma),$(strip $(foreach s,$(RL_SEEDS),$(NS_OUT)/eval/$(1)-s$(s).jsonl)))
# world-model summaries: each start's (wm/S.json) and each row's (wm/KIND/S-s.json)
NS_WM        = $(foreach m,$(NS_STARTS),$(NS_OUT)/wm/$(m).json) $(foreach r,$(NS_ROWS),$(NS_OUT)/wm/$(r).json)

rl-next-state: install
	$(MAKE) -j3 rl-ns-compare CONFIG=configs/rl-next-state.mk

rl-ns-compare: $(NS_OUT)/compare.json $(NS_OUT)/wm/compare.json
.SECONDARY: $(foreach r,$(NS_ROWS),$(NS_OUT)/$(r)/done)

$(NS_OUT)/RL/%/done: $(OUT)/$$(call STAGE_START_OF,$$*)/done
	$(call STAGED_OUTCOME_RUN,$(OUT)/$(call STAGE_START_OF,$*))

$(NS_OUT)/NS+RL/%/done: $(NS_OUT)/NS/%/done
	$(call STAGED_OUTCOME_RUN,$(NS_OUT)/NS/$*)

$(NS_OUT)/NS/%/done: $(OUT)/$$(call STAGE_START_OF,$$*)/done $(OUT)/outcomes_iwm.jsonl
	$(EEXP) rl --resume --model $(OUT)/$(call STAGE_START_OF,$*) --env $(ENV) $(ENV_ARGS) -o $(@D) --seed $(call STAGE_SEED_OF,$*) \
	  --reward next-state --outcomes $(OUT)/outcomes_iwm.jsonl --max-tokens $(NS_TOKENS) \
	  --max-steps $(NS_STEPS) -G $(RL_G) --tasks-per-step $(NS_TASKS) --lr $(RL_LR) $(NS_ARGS) -q && touch $@

$(eval $(call STAGED_EVAL_RULE,$(NS_OUT)))

# held-out outcomes of test tasks (no start trained on a test task), branched as the IWM data was
$(NS_OUT)/heldout.jsonl:
	@mkdir -p $(@D)
	$(EEXP) expert --env $(ENV) $(ENV_ARGS) --split test -n $(NS_HELDOUT) --seed 100 -q \
	  | $(EEXP) branch --propose admissible -k $(K_IWM) --seed 100 -q | $(EEXP) rollout -q $(RESUMABLE)
	mv $@.part $@

# the world-model eval of a start (wm/IWM.json) or of a row (wm/NS/IWM-s0.json; a refused run's: its start's),
# asked with the recipe's serializer settings, greedy
$(NS_OUT)/wm/%.json: $$(if $$(findstring /,$$*),$(NS_OUT)/$$*/done,$(OUT)/$$*/done) $(NS_OUT)/heldout.jsonl
	@mkdir -p $(@D)
	$(EEXP) world-model-eval --policy $$(cat $(NS_OUT)/$*/start 2>/dev/null \
	  || echo $(if $(findstring /,$*),$(NS_OUT)/$*,$(OUT)/$*)) $(DATA_ARGS) --max-tokens $(NS_TOKENS) \
	  $(NS_OUT)/heldout.jsonl -q -o $(@:.json=.jsonl).part --resume --summary $@.part
	mv $(@:.json=.jsonl).part $(@:.json=.jsonl)
	mv $@.part $@

# the world-model accuracy of each start and its rows, the seeds of each row pooled, each against its start
NS_WM_GROUP  = $(2)=$(subst $(eval) ,$(comma),$(strip $(foreach s,$(RL_SEEDS),$(NS_OUT)/wm/$(1)-s$(s).jsonl)))
$(NS_OUT)/wm/compare.json: $(NS_WM)
	$(EEXP) world-model-eval --compare $(foreach m,$(NS_STARTS),$(m)=$(NS_OUT)/wm/$(m).jsonl \
	  $(call NS_WM_GROUP,RL/$(m),$(m)+RL) $(call NS_WM_GROUP,NS/$(m),$(m)+NS) $(call NS_WM_GROUP,NS+RL/$(m),$(m)+NS+RL)) \
	  --summary $@

$(NS_OUT)/compare.json: $(foreach m,$(NS_STARTS),$(call RL_START,$(m))) \
  $(foreach r,$(NS_ROWS),$(NS_OUT)/eval/$(r).jsonl)
	$(EEXP) eval --compare $(foreach m,$(NS_STARTS),$(m)=$(call RL_START,$(m)) $(call NS_GROUP,RL/$(m),$(m)+RL) \
	  $(call NS_GROUP,NS/$(m),$(m)+NS) $(call NS_GROUP,NS+RL/$(m),$(m)+NS+RL)) --summary $@ --plot $(NS_OUT)/compare.png
	@for f in $(NS_OUT)/RL/*/refused $(NS_OUT)/NS+RL/*/refused; do test ! -f $$f || \
	  echo "$$(dirname $$f): refused at the probe, its row is its start $$(cat $$(dirname $$f)/start)"; done
	@echo "results: $@, plot: $(NS_OUT)/compare.png, world-model accuracy: $(NS_OUT)/wm/"
