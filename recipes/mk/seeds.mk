# Included by ../Makefile, whose settings it reads; `make -n -C recipes TARGET` prints what a target runs.

# --- seeds: the whole comparison once per seed, pooled -------------------------------------------------------------
# One training run measures training noise as much as the method (the same settings gave IWM 28.5% on one CPU and
# 14.5% on another). Each seed redoes everything it seeds: expert data, alternatives, the model's init, batch order.
# Seed s lives in $(OUT)/seed<s>; `eval --compare NAME=FILES` pools the seeds of each method (mean, sd, range) and
# tests each against IL by an exact sign-flip test over tasks (successes summed over seeds).
SEEDS     ?= 0 1 2
SEED_GROUP = $(1)=$(subst $(eval) ,$(comma),$(strip $(foreach s,$(SEEDS),$(OUT)/seed$(s)/eval/$(1).jsonl)))

# Without a GPU the seeds run one after another (each seed's targets side by side under make's own -j); with one
# (GPU_JOBS, ../Makefile) every seed's comparison is a sub-make of one make of GPU_JOBS jobs, so all the seeds'
# fine-tunes share its jobs and run side by side. GPU_JOBS= below them: no seed's sub-make starts a make of its own.
SEED_RUNS = $(addprefix seed-run-,$(SEEDS))
# what every seed reads and a config makes once (SHARED_BY_SEEDS: ALFWorld's generated games, SmolLM2's install) is
# made before the seeds' makes start: side by side, each would make it at the same time, into the same place
seeds $(SEED_RUNS): | $(SHARED_BY_SEEDS)
seeds: install
	$(if $(GPU_JOBS),$(MAKE) -j$(GPU_JOBS) $(SEED_RUNS) GPU_JOBS=,$(foreach s,$(SEEDS),$(MAKE) compare \
	  OUT=$(OUT)/seed$(s) SEED=$(s) &&) true)
	@mkdir -p $(OUT)/seeds
	$(EEXP) eval --compare $(foreach r,$(ROWS) $(addsuffix ~think,$(THINK_ROWS)) $(addsuffix ~score,$(SCORE_ROWS)),$(call SEED_GROUP,$(r))) \
	  --summary $(OUT)/seeds/compare.json \
	  --plot $(OUT)/seeds/compare.png
	$(foreach m,$(filter IL@SR IL@IWM,$(MATCHED_ROWS)),$(EEXP) eval --compare $(call SEED_GROUP,$(m)) \
	  $(call SEED_GROUP,$(subst IL@,,$(m))) --summary $(OUT)/seeds/vs-$(m).json > /dev/null &&) true
	$(if $(RECOVERY_N),$(EEXP) eval --compare $(foreach r,$(RECOVERY_ROWS),$(r)=$(subst $(eval) ,$(comma),$(strip \
	  $(foreach s,$(SEEDS),$(OUT)/seed$(s)/recovery/$(r).jsonl)))) --summary $(OUT)/seeds/recovery.json)
	@echo "results: $(OUT)/seeds/compare.json, plot: $(OUT)/seeds/compare.png"

# seed s's comparison, in a make of its own (its OUT and SEED are not the other seeds')
.PHONY: $(SEED_RUNS)
$(SEED_RUNS): seed-run-%:
	$(MAKE) compare OUT=$(OUT)/seed$* SEED=$*

# --- results kept in a repository: one seed at a time, pooled from what is kept ------------------------------------
# `publish` copies seed SEED's episode files (gzip: eval --compare reads them as they are), every run's
# metrics.jsonl (its validation losses) and the stages' --stats into RESULTS/seed<SEED>; `pooled` pools every seed
# kept there (pooled.py: the table, pooled.json, pooled.png). So a recipe too long for one sitting runs one seed per
# invocation, e.g. `make CONFIG=configs/smollm2.mk seeds SEEDS=1 && make CONFIG=configs/smollm2.mk publish
# OUT=out/smollm2/seed1 SEED=1 && make CONFIG=configs/smollm2.mk pooled`.
# The signals recipe publishes the same way (`make CONFIG=configs/signals.mk publish OUT=out/signals/seed0 SEED=0
# RESULTS=...`): its curated runs as <run>-curated, the critic's held-out accuracy as critic_eval/<split>.json.
# A run added to a kept seed later (a row trained in another sitting) publishes alone, beside what is kept there:
# `make ... publish OUT=out/smollm2/seed0 SEED=0 PUBLISH_NEEDS= PUBLISH_TRAIN=SR-grounded`.
# A seed carried without its machine (recipes/carry.py save: its episodes gzipped, its stages' --stats in stats/)
# publishes from the carried folder as from OUT: `make ... publish OUT=$PWD/<carried>/seed<s> SEED=<s>`.
RESULTS ?=
PUBLISH_NEEDS ?= $(OUT)/compare.json
PUBLISH_TRAIN ?= IL IWM SR $(SR_GROUNDED_ROW) $(ACTOBS_ROW) $(MATCHED_ROWS)
publish:
	@test -n "$(RESULTS)" || { echo "publish: give RESULTS=FOLDER (where the seed's results are kept)" >&2; exit 1; }
	@case "$(OUT)" in */seed$(SEED)) ;; *) echo "publish: OUT=$(OUT) is not seed $(SEED)'s folder" \
	  "(RESULTS/seed$(SEED)): give SEED=<s> with OUT=.../seed<s>" >&2; exit 1;; esac
	@for f in $(PUBLISH_NEEDS); do test -f $$f || { echo "publish: $$f is missing: run the seed first" >&2; exit 1; }; done
	mkdir -p $(RESULTS)/seed$(SEED)/train
	for f in $(wildcard $(OUT)/eval/*.jsonl $(OUT)/recovery/*.jsonl) $(wildcard $(OUT)/curated/eval/*.jsonl) \
	  $(wildcard $(OUT)/eval/*.jsonl.gz $(OUT)/recovery/*.jsonl.gz); do \
	  d=$(RESULTS)/seed$(SEED)/$$(basename $$(dirname $$f)); r=$$(basename $$(basename $$f .gz) .jsonl); \
	  case $$f in */curated/eval/*) r=$$r-curated;; esac; \
	  mkdir -p $$d && gzip -dcf $$f | gzip -9nc > $$d/$$r.jsonl.gz.tmp && mv $$d/$$r.jsonl.gz.tmp $$d/$$r.jsonl.gz \
	  || exit 1; done
	for r in $(PUBLISH_TRAIN); do \
	  name=$$(echo $$r | sed 's|^curated/\(.*\)|\1-curated|'); \
	  cp $(OUT)/$$r/metrics.jsonl $(RESULTS)/seed$(SEED)/train/$$name.metrics.jsonl || exit 1; \
	  if test -f $(OUT)/$$r/card.yaml; then cp $(OUT)/$$r/card.yaml $(RESULTS)/seed$(SEED)/train/$$name.card.yaml || exit 1; fi; \
	done
	$(if $(wildcard $(OUT)/*.stats.json $(OUT)/stats/*.stats.json),\
	  cp $(wildcard $(OUT)/*.stats.json $(OUT)/stats/*.stats.json) $(RESULTS)/seed$(SEED)/)
	$(if $(wildcard $(OUT)/critic_eval/*.json),mkdir -p $(RESULTS)/seed$(SEED)/critic_eval && \
	  cp $(wildcard $(OUT)/critic_eval/*.json) $(RESULTS)/seed$(SEED)/critic_eval/)

# RESULTS_PAGE, the results page that shows RESULTS/pooled.md: its copy of the old table becomes the new one too (a
# page that does not show the old table as it is, edited since, is refused before anything is written)
RESULTS_PAGE ?=
pooled:
	@test -n "$(RESULTS)" || { echo "pooled: give RESULTS=FOLDER (where the seeds' results are kept)" >&2; exit 1; }
	$(PYTHON) pooled.py $(RESULTS) --write $(if $(RESULTS_PAGE),--page $(RESULTS_PAGE))
