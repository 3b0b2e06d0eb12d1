# Included by ../Makefile, whose settings it reads; `make -n -C recipes TARGET` prints what a target runs.

# --- IWM and SR data dreamed by a world model (issue #53 point 3) --------------------------------------------------
# DREAM_ROWS = IWM-dream SR-dream (configs/dream.mk): a world model WM, WM_EPOCHS epochs of this run's own IWM data from
# the base; then this run's expert, branch and rollout again in dream:WM@ENV (the first page of every episode real,
# every later one predicted by WM; `eexp envs dream`), with the same seed, K and proposer; the IWM and SR data made
# from those dreamed outcomes as from the real ones; and IWM-dream and SR-dream trained on them exactly as IWM and SR
# (the real IL data, the same settings). Every row is evaluated in the real ENV. The rollouts' --stats say what each
# environment step cost, real (rollout_iwm.stats.json) and dreamed (dream/rollout_iwm.stats.json).
WM_EPOCHS  ?= 3
DREAM_ENV   = dream:$(OUT)/WM@$(ENV)

$(OUT)/WM/done: $(OUT)/iwm.jsonl $(MODEL)/config.json
	$(FINETUNE) $< --model $(MODEL) -o $(OUT)/WM --epochs $(WM_EPOCHS) --lr $(LR) --batch-size $(BATCH) \
	  --seed $(SEED) -q $(TRAIN_ARGS) && touch $@

$(OUT)/dream/expert.jsonl: $(OUT)/WM/done
	@mkdir -p $(@D)
	$(EEXP) expert --env $(DREAM_ENV) $(ENV_ARGS) --split train -n $(N_EXPERT) --seed $(SEED) -q $(RESUMABLE)
	mv $@.part $@

$(OUT)/dream/outcomes_iwm.jsonl: $(OUT)/dream/expert.jsonl $(PROPOSER_DEP)
	$(EEXP) branch $(PROPOSE_IWM) -k $(K_IWM) --seed $(SEED) -q $< \
	  | $(EEXP) rollout -q $(RESUMABLE) --stats $(OUT)/dream/rollout_iwm.stats.json
	mv $@.part $@

$(OUT)/dream/outcomes_sr.jsonl: $(OUT)/dream/expert.jsonl $(filter %.gguf,$(POLICY)) $(PROPOSER_DEP)
	$(EEXP) branch $(PROPOSE_SR) -k $(K_SR) --seed $(SEED) -q $< \
	  | $(EEXP) rollout -q $(RESUMABLE) --stats $(OUT)/dream/rollout_sr.stats.json
	mv $@.part $@

$(OUT)/dream/iwm.jsonl: $(OUT)/dream/outcomes_iwm.jsonl
	$(EEXP) world-model-data $(DATA_ARGS) -q $< $(WHOLE)

$(OUT)/dream/sr.jsonl: $(OUT)/dream/outcomes_sr.jsonl
	$(EEXP) reflect $(REFLECT_BY) --max-alternatives $(K_SR) $(DATA_ARGS) $(REFLECT_ARGS) --seed $(SEED) -q $< $(RESUMABLE) \
	  --stats $(OUT)/dream/reflect.stats.json --rejected $(OUT)/dream/sr.rejected.jsonl
	mv $@.part $@

$(OUT)/dream/sr_train.jsonl: $(OUT)/il.jsonl $(OUT)/dream/sr.jsonl
	$(EEXP) mix --concat $^ $(WHOLE)

$(OUT)/IWM-dream/done: $(OUT)/il.jsonl $(OUT)/dream/iwm.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --warmup-data $(OUT)/dream/iwm.jsonl $(IWM_ARGS) --model $(MODEL) -o $(OUT)/IWM-dream && touch $@

$(OUT)/SR-dream/done: $(OUT)/dream/sr_train.jsonl $(MODEL)/config.json $(VAL)
	$(TRAIN) $< --model $(MODEL) -o $(OUT)/SR-dream && touch $@
