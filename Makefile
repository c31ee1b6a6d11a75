# Set-up and the two main jobs. Each target first creates/updates the project-local virtual environment.
#   make demo   -- the main job: sample faces (see README)
#   make test   -- the test suite (CPU, offline, a few minutes on 2 cores)
#   make train-faceworld -- train and ship the FaceWorld models (checkpoints/faceworld/, about 85 min on 2 CPU cores)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test demo train-tiny train-faceworld clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Keep an installed torch (CPU or CUDA); with none, take 2.13.0 (the CPU build where no GPU is present).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

test: venv
	$(PY) -m pytest -q -n 2 tests

demo: venv
	$(PY) scripts/demo.py --out outputs/demo

# Train the shipped FaceWorld models (checkpoints/faceworld/) from scratch: about 85 min on 2 CPU cores, fixed seeds.
train-faceworld: venv
	LDM_PROGRESS=0 $(PY) scripts/train_faceworld.py --work outputs/faceworld_train --export checkpoints/faceworld

clean:
	rm -rf outputs runs .pytest_cache
