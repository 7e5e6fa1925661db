# Two entry points for a fresh machine (Python 3.11, no GPU needed):
#   make demo   venv + install + train -> export -> bench on the embedded Fashion-MNIST subset
#   make test   venv + install + the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
PYTEST_ARGS ?=
# all tests, slow ones included (about 6 minutes on 2 cores); quick loop: make test PYTEST_ARGS='-m "not slow"'

.PHONY: demo test lint install clean

$(BIN)/gee-deploy: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[cpu,openvino,test]'
	touch $@

install: $(BIN)/gee-deploy

demo: install
	rm -rf $(RUN)
	$(BIN)/gee-deploy train demo --out $(RUN)
	$(BIN)/gee-deploy export $(RUN)/best.pt --out $(RUN)/model.onnx
	$(BIN)/gee-deploy bench $(RUN)/best.pt $(RUN)/model.onnx --out $(RUN)/bench

# the house style and the types of gee_deploy/ (settings in pyproject.toml), then the suite
lint: install
	$(BIN)/ruff check gee_deploy
	$(BIN)/ruff format --check gee_deploy
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
