# Included by ../Makefile, whose settings it reads; `make -n -C recipes TARGET` prints what a target runs.

# --- scaling: the paper's two curves, with seeds -------------------------------------------------------------------
# Fig. 4a, data efficiency: IL, IWM and SR trained on 1/8, 1/4, 1/2 and all of FULL_N expert trajectories.
# Fig. 4b, branching factor: IWM and SR with K = 1, 2, 4, 8 alternatives per state, at 1/K_AT of the data.
# Every point has one update budget (STEPS) whatever its data, so the curves compare methods at equal compute;
# IWM's warm-up is a fixed quarter of it, since one epoch of world-model data outgrows the budget at full data.
# Each point runs once per seed (SEEDS) in $(SCALE_OUT)/frac<f>/seed<s> or k<K>/seed<s>; eval --compare pools the
# seeds of each point against IL (frac<f>.json, k<K>.json), and curves.py draws both curves with the seeds'
# spread and the runs' validation losses (scaling.png) and writes the tables (scaling.md).
# Whether a run converged in the budget is read from its validation loss: every fine-tune of a seed is scored every
# STEPS/10 updates on the IL examples of VAL_N train trajectories that no point trains on (the FULL_N + 1st ..
# FULL_N + VAL_N-th of the seed's task order, whose first FULL_N every fraction takes a prefix of).
#   make -C recipes scaling          # the full curves (configs/scaling.mk)
#   make -C recipes scaling-quick    # the same at a size that fits 30 minutes on 2 cores
FULL_N       ?= 1000
FRACTIONS    ?= 8 4 2 1
KS           ?= 1 2 4 8
K_AT         ?= 8
SCALE_OUT    ?= $(OUT)/scaling
WARMUP_STEPS ?= $(shell expr $(STEPS) / 4)
# one base per seed for every point of both curves (with PRETRAIN_STEPS, one pretraining per seed, not per point)
SCALE_BASE    = $(SCALE_OUT)/base/seed$(1)
SCALE_VAL     = $(if $(filter-out 0,$(VAL_N)),$(SCALE_OUT)/val/seed$(1).jsonl)
SCALE_VARS    = THINK_ROWS= ACTOBS_ROW= IWM_ARGS="--warmup-steps $(WARMUP_STEPS)" MODEL=$(call SCALE_BASE,$(1))/base \
                VAL=$(call SCALE_VAL,$(1))
FRAC_DIR      = $(SCALE_OUT)/frac$(1)/seed$(2)
K_DIR         = $(SCALE_OUT)/k$(1)/seed$(2)
POINT_FILES   = $(subst $(eval) ,$(comma),$(strip $(foreach s,$(SEEDS),$(1)/seed$(s)/eval/$(2).jsonl)))

scaling: install
	$(MAKE) -j3 scaling-curves CONFIG=configs/scaling.mk

scaling-quick: install
	$(MAKE) -j3 scaling-curves CONFIG=configs/scaling-quick.mk

SCALE_BASES  = $(foreach s,$(SEEDS),scale-base-seed$(s))
SCALE_POINTS = $(foreach f,$(FRACTIONS),$(foreach s,$(SEEDS),scale-frac$(f)-seed$(s))) \
               $(foreach k,$(KS),$(foreach s,$(SEEDS),scale-k$(k)-seed$(s)))
POINT_OF     = $(word $(2),$(subst -seed, ,$(1)))
.PHONY: scale-base-seed% scale-frac% scale-k%

# first the bases and the validation data, then every point (each a sub-make; under -j they share the job slots),
# then the tables
scaling-curves:
	$(MAKE) $(SCALE_BASES) $(foreach s,$(SEEDS),$(call SCALE_VAL,$(s)))
	$(MAKE) $(SCALE_POINTS)
	$(foreach f,$(FRACTIONS),$(EEXP) eval --compare $(foreach r,IL IWM SR random,\
	  $(r)=$(call POINT_FILES,$(SCALE_OUT)/frac$(f),$(r))) --summary $(SCALE_OUT)/frac$(f).json > /dev/null &&) true
	$(foreach k,$(KS),$(EEXP) eval --compare IL=$(call POINT_FILES,$(SCALE_OUT)/frac$(K_AT),IL) \
	  $(foreach r,IWM SR,$(r)=$(call POINT_FILES,$(SCALE_OUT)/k$(k),$(r))) --summary $(SCALE_OUT)/k$(k).json \
	  > /dev/null &&) true
	$(PYTHON) curves.py $(SCALE_OUT) --fractions $(subst $(eval) ,$(comma),$(FRACTIONS)) \
	  --ks $(subst $(eval) ,$(comma),$(KS)) --k-at $(K_AT) --full-n $(FULL_N) --steps $(STEPS)
	@echo "results: $(SCALE_OUT)/scaling.md, plot: $(SCALE_OUT)/scaling.png"

# the seed's first FULL_N + VAL_N train tasks, of which the last VAL_N are kept: held out from every point
VAL_END = $(shell expr $(FULL_N) + $(VAL_N))
$(SCALE_OUT)/val/seed%.jsonl:
	@mkdir -p $(@D)
	$(EEXP) expert --env $(ENV) $(ENV_ARGS) --split train -n $(VAL_END) --seed $* -q -o $(@D)/seed$*.expert.jsonl
	@test $$(wc -l < $(@D)/seed$*.expert.jsonl) -eq $(VAL_END) || { echo "the train split has fewer than FULL_N + VAL_N = $(VAL_END) tasks: none is held out for validation (VAL_N=0: no validation)" >&2; exit 1; }
	tail -n $(VAL_N) $(@D)/seed$*.expert.jsonl | $(EEXP) imitation-data $(DATA_ARGS) -q $(WHOLE)

scale-base-seed%:
	$(MAKE) OUT=$(call SCALE_BASE,$*) SEED=$* N_EXPERT=$(shell expr $(FULL_N) / $(K_AT)) \
	  $(call SCALE_BASE,$*)/base/config.json

# scale-frac8-seed1: IL, IWM, SR and random at 1/8 of the data, seed 1
scale-frac%:
	$(MAKE) OUT=$(call FRAC_DIR,$(call POINT_OF,$*,1),$(call POINT_OF,$*,2)) SEED=$(call POINT_OF,$*,2) \
	  N_EXPERT=$(shell expr $(FULL_N) / $(call POINT_OF,$*,1)) $(call SCALE_VARS,$(call POINT_OF,$*,2)) \
	  $(foreach r,IL IWM SR random,$(call FRAC_DIR,$(call POINT_OF,$*,1),$(call POINT_OF,$*,2))/eval/$(r).jsonl)

# scale-k4-seed1: IWM and SR with K = 4, seed 1
scale-k%:
	$(MAKE) OUT=$(call K_DIR,$(call POINT_OF,$*,1),$(call POINT_OF,$*,2)) SEED=$(call POINT_OF,$*,2) \
	  N_EXPERT=$(shell expr $(FULL_N) / $(K_AT)) K_IWM=$(call POINT_OF,$*,1) K_SR=$(call POINT_OF,$*,1) \
	  $(call SCALE_VARS,$(call POINT_OF,$*,2)) \
	  $(foreach r,IWM SR,$(call K_DIR,$(call POINT_OF,$*,1),$(call POINT_OF,$*,2))/eval/$(r).jsonl)
