# Set-up and the two main jobs. Each target first creates/updates the project-local virtual environment.
#   make demo   -- the main job: sample faces (see README)
#   make test   -- the test suite (CPU, offline, a few minutes on 2 cores)
#   make test-oldest -- the same tests on the oldest supported stack (constraints/oldest.txt, in .venv-oldest)
#   make figures -- the paper's figure kinds from the shipped FaceWorld models into docs/figures/ (see docs/figures.md)
#   make app    -- the web app on http://127.0.0.1:7860 (installs the app extra, Gradio)
#   make train-faceworld -- train and ship the FaceWorld models (checkpoints/faceworld/, about 2.5 hours on 2 CPU cores)
PYTHON ?= python3
VENV   ?= .venv
# pip constraints the venv is installed under: empty takes the newest releases setup.py allows; make test-oldest
# passes constraints/oldest.txt (setup.py's lower bounds). The stamp changes with setup.py and this file.
CONSTRAINTS ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py $(CONSTRAINTS) | cksum | cut -d' ' -f1)
PIP_C  := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
APP_STAMP := $(VENV)/.installed-app-$(shell cat setup.py | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-oldest demo figures train-tiny train-faceworld clean venv-app app test-browser

venv: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Keep an installed torch (CPU or CUDA); with none, take 2.13.0 (the CPU build where no GPU is present).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(PIP_C) "torch==2.13.0"
	$(PY) -m pip install -q $(PIP_C) -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# The app extra (Gradio) beside the dev install: `make test` then runs the app's tests too (they skip without it).
venv-app: $(APP_STAMP)

$(APP_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,app]"
	touch $@

test: venv
	@$(PY) -c "from importlib.metadata import version as v; print('stack:', ', '.join(p + ' ' + v(p) for p in ('torch', 'pytorch-lightning', 'transformers', 'tokenizers', 'numpy', 'pillow')))"
	$(PY) -m pytest -q -n 2 tests

# The oldest supported stack (docs/setup.md, "Supported versions"): the same tests in .venv-oldest.
test-oldest:
	$(MAKE) --no-print-directory test VENV=.venv-oldest CONSTRAINTS=constraints/oldest.txt

app: venv-app
	$(PY) scripts/app.py

# The app in a real browser (headless Chromium through Selenium; not part of `make test`): paints, generates and
# writes docs/app.png. Needs Debian's browser: apt-get update && apt-get install -y chromium chromium-driver
test-browser: venv-app
	$(PY) -m pip install -q -e ".[dev,app,browser]"
	$(PY) -m pytest -q tests_browser

demo: venv
	$(PY) scripts/demo.py --out outputs/demo

# Teaser, method comparison, influence maps (supp. Fig. A4/A5) and editing alpha sweeps; edits resume from outputs/figures/edits.
figures: venv
	LDM_PROGRESS=0 $(PY) scripts/figures.py --out docs/figures

# Train the shipped FaceWorld models (checkpoints/faceworld/) from scratch: about 2.5 hours (149.5 min for the shipped models, recipe sections 22 to 24) on 2 CPU cores, fixed seeds
# (docs/faceworld_recipe.md); give it the machine to itself.
train-faceworld: venv
	LDM_PROGRESS=0 $(PY) scripts/train_faceworld.py --work outputs/faceworld_train --export checkpoints/faceworld

clean:
	rm -rf outputs runs .pytest_cache
