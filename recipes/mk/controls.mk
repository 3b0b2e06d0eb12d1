# The rows beside the core comparison (compare.mk), each on by its setting in ../Makefile: ActObs (ACTOBS_ROW),
# SR-grounded (SR_GROUNDED_ROW), the compute-matched controls IL@SR, IL@IWM, IWM@IL (MATCHED_ROWS, on at the paper's
# budgets, EPOCHS), and the recovery test (RECOVERY_N: episodes that start off the expert's path).

# --- ActObs and SR-grounded data ------------------------------------------------------------------------------
$(OUT)/il_obs.jsonl: $(OUT)/expert.jsonl
	$(EEXP) imitation-data --observation-loss $(DATA_ARGS) -q $< $(WHOLE)

# the same alternatives, every reflection grounded (the SR_GROUNDED_ROW run)
$(OUT)/sr_grounded.jsonl: $(OUT)/outcomes_sr.jsonl
	$(EEXP) reflect --reflector grounded --max-alternatives $(K_SR) $(DATA_ARGS) --seed $(SEED) -q $< $(RESUMABLE)
	mv $@.part $@

$(OUT)/srg_train.jsonl: $(OUT)/il.jsonl $(OUT)/sr_grounded.jsonl
	$(EEXP) mix --concat $^ $(WHOLE)

# --- their runs, and the compute-matched controls (MATCHED_ROWS, UPDATES_OF: ../Makefile) -------------------------
$(OUT)/ActObs/done: $(OUT)/il_obs.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --model $(MODEL) -o $(OUT)/ActObs && touch $@

$(OUT)/SR-grounded/done: $(OUT)/srg_train.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --model $(MODEL) -o $(OUT)/SR-grounded && touch $@

$(OUT)/IL@SR/done: $(OUT)/il.jsonl $(call MATCHED_TO,SR) $(MODEL)/config.json $(VAL)
	$(call TRAIN_AT,--max-steps $(call UPDATES_OF,SR)) $< --model $(MODEL) -o $(OUT)/IL@SR && touch $@

$(OUT)/IL@IWM/done: $(OUT)/il.jsonl $(call MATCHED_TO,IWM) $(MODEL)/config.json $(VAL)
	$(call TRAIN_AT,--max-steps $(call UPDATES_OF,IWM)) $< --model $(MODEL) -o $(OUT)/IL@IWM && touch $@

$(OUT)/IWM@IL/done: $(OUT)/il.jsonl $(OUT)/iwm.jsonl $(call MATCHED_TO,IL) $(MODEL)/config.json $(VAL)
	$(call TRAIN_AT,--max-steps $(call UPDATES_OF,IL)) $< --warmup-data $(OUT)/iwm.jsonl $(IWM_ARGS) \
	  --model $(MODEL) -o $(OUT)/IWM@IL && touch $@

# --- the recovery test: episodes that start off the expert's path ---------------------------------------------------
RECOVERY_ROWS = IL IWM SR $(SR_GROUNDED_ROW)
$(OUT)/recovery/%.jsonl: $(OUT)/%/done $(if $(EXPORT),$(OUT)/%.$(EXPORT).gguf)
	@mkdir -p $(OUT)/recovery $(OUT)/eval
	$(call EVAL_RUN,$*) --env $(ENV) $(ENV_ARGS) --split test -n $(RECOVERY_N) --start off-path \
	  --act $(call EVAL_ACT,$*) --seed $(SEED) -q $(EVAL_ARGS) --summary $(basename $@).summary.json $(RESUMABLE)
	mv $@.part $@

$(OUT)/recovery.json: $(foreach r,$(RECOVERY_ROWS),$(OUT)/recovery/$(r).jsonl)
	$(EEXP) eval --compare $^ --summary $@

recovery: $(OUT)/recovery.json
