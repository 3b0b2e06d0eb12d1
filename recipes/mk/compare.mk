# The core comparison, `make -C recipes compare` (included by ../Makefile, whose settings it reads): expert data ->
# IL data, IWM data (K_IWM executed alternatives a state) and SR data (K_SR alternatives and a reflection a state)
# -> one base model -> IL, IWM and SR fine-tuned at one budget -> each evaluated on SPLITS -> the table and plot.
# The other rows of the table (ActObs, SR-grounded, the compute-matched controls) are in controls.mk, the dreamed
# ones in dream.mk. Every command this file runs, with the variables filled in, is printed (not run) by
#   make -n -C recipes CONFIG=configs/lowdata.mk compare
# --- data ---------------------------------------------------------------------------------------------------------
$(OUT)/expert.jsonl:
	@mkdir -p $(OUT)
	$(if $(CURATE),$(EEXP) expert --env $(ENV) $(ENV_ARGS) --split train -n $(CURATE_POOL) --seed $(SEED) -q \
	  $(RAY_ARGS) | $(EEXP) curate -n $(N_EXPERT) --by $(CURATE) --seed $(SEED) -q -o $@,\
	  $(EEXP) expert --env $(ENV) $(ENV_ARGS) --split train -n $(N_EXPERT) --seed $(SEED) -q $(RAY_ARGS) $(RESUMABLE) \
	  && mv $@.part $@)

$(OUT)/il.jsonl: $(OUT)/expert.jsonl
	$(EEXP) imitation-data $(DATA_ARGS) -q $< $(WHOLE)

$(OUT)/outcomes_iwm.jsonl: $(OUT)/expert.jsonl $(PROPOSER_DEP)
	$(EEXP) branch $(PROPOSE_IWM) -k $(K_IWM) --seed $(SEED) -q $< \
	  | $(EEXP) rollout $(WORKERS) -q $(RESUMABLE) --stats $(OUT)/rollout_iwm.stats.json
	mv $@.part $@

$(OUT)/iwm.jsonl: $(OUT)/outcomes_iwm.jsonl
	$(EEXP) world-model-data $(DATA_ARGS) -q $< $(WHOLE)

# A POLICY that is a .gguf file is a prerequisite, so a config can say how to get it (configs/smollm2.mk).
$(OUT)/outcomes_sr.jsonl: $(OUT)/expert.jsonl $(filter %.gguf,$(POLICY)) $(PROPOSER_DEP)
	$(EEXP) branch $(PROPOSE_SR) -k $(K_SR) --seed $(SEED) -q $< \
	  | $(EEXP) rollout $(WORKERS) -q $(RESUMABLE)
	mv $@.part $@

# every executed alternative is shown to the reflector (reflect's own default shows the first 3)
$(OUT)/sr.jsonl: $(OUT)/outcomes_sr.jsonl
	$(EEXP) reflect $(REFLECT_BY) --max-alternatives $(K_SR) $(DATA_ARGS) $(REFLECT_ARGS) --seed $(SEED) -q $< $(RESUMABLE) \
	  --stats $(OUT)/reflect.stats.json --rejected $(OUT)/sr.rejected.jsonl
	mv $@.part $@

$(OUT)/sr_train.jsonl: $(OUT)/il.jsonl $(OUT)/sr.jsonl
	$(EEXP) mix --concat $^ $(WHOLE)

# --- models -------------------------------------------------------------------------------------------------------
ifeq ($(IMPORT),)
# A model from scratch whose byte-level BPE tokenizer is trained on the expert data (it encodes any page, so the
# alternatives' pages need not be in its corpus, and the base is ready before any alternative is proposed; the rule
# used to name the world-model data too when no PROPOSER was set, but PROPOSER_DEP expands to a space, so no
# committed run's tokenizer ever saw it); with PRETRAIN_STEPS, pretrained on the pages of random walks too (the same
# base for every method).
PRIOR = $(if $(filter-out 0,$(PRETRAIN_STEPS)),$(OUT)/pages.jsonl)
$(OUT)/base/config.json: $(OUT)/expert.jsonl $(PRIOR)
	rm -rf $(OUT)/base
	$(EEXP) init-model $(OUT)/base --size $(SIZE) --seed $(SEED) $(addprefix --corpus ,$(filter-out $(PRIOR),$^)) \
	  $(if $(PRIOR),--pretrain $(PRIOR) --pretrain-steps $(PRETRAIN_STEPS)) -q

$(OUT)/pages.jsonl:
	@mkdir -p $(OUT)
	$(EEXP) corpus --env $(ENV) $(ENV_ARGS) --walks $(CORPUS_WALKS) --holdout $(N_EVAL) $(CORPUS_ARGS) --seed $(SEED) -q $(WHOLE)
else
# A pretrained model from a GGUF (dequantized to float32; tokenizer and chat template from the file).
$(OUT)/base/config.json: $(IMPORT)
	rm -rf $(OUT)/base
	$(EEXP) import-model $(IMPORT) -o $(OUT)/base
endif

$(OUT)/IL/done: $(OUT)/il.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --model $(MODEL) -o $(OUT)/IL && touch $@

$(OUT)/IWM/done: $(OUT)/il.jsonl $(OUT)/iwm.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --warmup-data $(OUT)/iwm.jsonl $(IWM_ARGS) --model $(MODEL) -o $(OUT)/IWM && touch $@

$(OUT)/SR/done: $(OUT)/sr_train.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --model $(MODEL) -o $(OUT)/SR && touch $@

# The validation trajectories: pick_tasks' order is a seeded shuffle, so the first N_EXPERT (or CURATE_POOL) of a
# longer run are the ones trained on (or chosen from) and the rest are held out; a split too small to hold any out
# is an error, not a silent validation on training data. Without CURATE the longer run starts from expert.jsonl
# (`expert --resume` skips the tasks written), so only the VAL_N held-out tasks are played again: ALFWorld's 560
# trained games once, not twice (about 13 CPU-minutes a seed); the records are the full run's (tested).
VAL_SKIP = $(if $(CURATE),$(CURATE_POOL),$(N_EXPERT))
$(OUT)/val.jsonl: $(if $(CURATE),,$(OUT)/expert.jsonl)
	@mkdir -p $(OUT)
	$(if $(CURATE),,cp $(OUT)/expert.jsonl $(OUT)/val_expert.jsonl && )$(EEXP) expert --env $(ENV) $(ENV_ARGS) \
	  --split train -n $$(( $(VAL_SKIP) + $(VAL_N) )) --seed $(SEED) -q $(RAY_ARGS) $(if $(CURATE),,--resume) \
	  -o $(OUT)/val_expert.jsonl
	@test $$(wc -l < $(OUT)/val_expert.jsonl) -gt $(VAL_SKIP) || { echo "validation: the train split has no task \
	  beyond the $(VAL_SKIP) trained on, so none is held out (VAL_N=0: no validation)" >&2; exit 1; }
	tail -n +$$(( $(VAL_SKIP) + 1 )) $(OUT)/val_expert.jsonl | $(EEXP) imitation-data $(DATA_ARGS) -q $(WHOLE)

# --- evaluation ---------------------------------------------------------------------------------------------------
# The fine-tuned model (a LoRA adapter is merged into its base) as one GGUF file for llama.cpp, kept after eval.
.PRECIOUS: $(OUT)/%.$(EXPORT).gguf
$(OUT)/%.$(EXPORT).gguf: $(OUT)/%/done
	$(EEXP) export $(OUT)/$* --quant $(EXPORT) -o $@

# One episode file per run, holding every split, so the comparison has one row per run and split. A run is
# evaluated with ACT (SR with ACT_SR); `RUN~think.jsonl` is the same run with --act think.
EVAL_POLICY = $(if $(EXPORT),$(OUT)/$(1).$(EXPORT).gguf,$(OUT)/$(1))
EVAL_ACT = $(if $(filter SR SR-grounded SR-dream,$(1)),$(ACT_SR),$(ACT))
LLAMA_SERVER_RUN = $(PYTHON) ../tests/llama_server.py run
# eval of run $(1): in-process with -j JOBS, or (SERVER_SLOTS with EXPORT) against a llama-server on its GGUF. A
# server cannot tell eval the serializer settings the model was trained with (a GGUF or a checkpoint records them),
# so DATA_ARGS are given to eval too: every run is evaluated on the prompts it was trained on.
# --act think goes through the server too (it continues the model's reply after the thought, continue_final_message),
# but there the action after the thought is chosen by the server's grammar (as constrained), not ranked by
# log-likelihood as in-process: man eexp-eval, --act.
EVAL_RUN = $(if $(and $(SERVER_SLOTS),$(EXPORT)),\
  $(LLAMA_SERVER_RUN) $(call EVAL_POLICY,$(1)) --parallel $(SERVER_SLOTS) --log $(OUT)/eval/$(1).server.log -- \
  $(EEXP) eval --concurrency $(SERVER_SLOTS) $(DATA_ARGS),$(EEXP) eval --policy $(call EVAL_POLICY,$(1)) $(WORKERS))
# Each split is evaluated into a part of its own, FILE.SPLIT.part, with eval's --resume (as the data stages, RESUMABLE):
# an evaluation stopped part-way continues from its finished episodes when make runs again (its summary is the whole
# split's); the parts are joined in SPLITS order when every split is done.
EVAL_PARTS = $(foreach s,$(SPLITS),$@.$(s).part)
define JOIN_EVAL_PARTS
	cat $(EVAL_PARTS) > $@.part
	mv $@.part $@
	rm -f $(EVAL_PARTS)
endef
define EVAL_SPLITS
	@mkdir -p $(OUT)/eval
	$(foreach s,$(SPLITS),$(call EVAL_RUN,$(1)) --env $(ENV) $(ENV_ARGS) --split $(s) -n $(N_EVAL) \
	  --act $(2) --seed $(SEED) -q $(EVAL_ARGS) --summary $(basename $@).$(s).summary.json -o $@.$(s).part --resume &&) true
	$(JOIN_EVAL_PARTS)
endef
$(OUT)/eval/%~think.jsonl: $(OUT)/%/done $(if $(EXPORT),$(OUT)/%.$(EXPORT).gguf)
	$(call EVAL_SPLITS,$*,think)
$(OUT)/eval/%~score.jsonl: $(OUT)/%/done $(if $(EXPORT),$(OUT)/%.$(EXPORT).gguf)
	$(call EVAL_SPLITS,$*,score)
$(OUT)/eval/%.jsonl: $(OUT)/%/done $(if $(EXPORT),$(OUT)/%.$(EXPORT).gguf)
	$(call EVAL_SPLITS,$*,$(call EVAL_ACT,$*))

# the floor: uniform over the admissible actions, with the runs' episode length (EVAL_ARGS; random rows published
# before issue 40's re-runs had the environment's default instead, shop's 15 steps against the runs' 10)
$(OUT)/eval/random.jsonl:
	@mkdir -p $(OUT)/eval
	$(foreach s,$(SPLITS),$(EEXP) eval --policy random --env $(ENV) $(ENV_ARGS) --split $(s) -n $(N_EVAL) \
	  --seed $(SEED) -q $(EVAL_ARGS) -o $@.$(s).part --resume &&) true
	$(JOIN_EVAL_PARTS)

THINK_EVALS = $(foreach r,$(THINK_ROWS),$(OUT)/eval/$(r)~think.jsonl) $(foreach r,$(SCORE_ROWS),$(OUT)/eval/$(r)~score.jsonl)
ROWS = IL IWM SR $(SR_GROUNDED_ROW) $(ACTOBS_ROW) $(MATCHED_ROWS) $(DREAM_ROWS) random
$(OUT)/compare.json: $(foreach r,$(ROWS),$(OUT)/eval/$(r).jsonl) $(THINK_EVALS)
	$(EEXP) eval --compare $^ --summary $@ --plot $(OUT)/compare.png

ifeq ($(GPU_JOBS),)
compare: $(OUT)/compare.json $(if $(RECOVERY_N),$(OUT)/recovery.json)
	@echo "results: $(OUT)/compare.json, plot: $(OUT)/compare.png"
else
# on a GPU (GPU_JOBS, ../Makefile): the same in a make of GPU_JOBS jobs, so the arms' fine-tunes run side by side
compare:
	$(MAKE) -j$(GPU_JOBS) compare GPU_JOBS=
endif
