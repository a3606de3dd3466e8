# `make test` and `make demo` create .venv on first use and install into it.
# A stop signal to the process group (SLURM, `timeout`, Ctrl-C) ends the script with 128 + signal and
# make with the same signal, so the caller sees that status; a rerun continues.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-all demo readme-figures paper-demo robust-demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" tests

bench: $(STAMP)
	$(PY) benchmarks/bench_attacks.py --small

clean:
	rm -rf $(VENV) .pytest_cache

DEMO_OUT ?= demo_output
PAPER_DEMO_OUT ?= paper_demo_output
PAPER_DEMO_STEPS ?= 3
PAPER_DEMO_ARGS ?=
ROBUST_DEMO_OUT ?= robust_demo_output
ROBUST_DEMO_ARGS ?=
DEMO_FLAGS = --feature_size 8 --hidden_size 96 --mlp_dim 192 --num_heads 4 --roi_x 48 --roi_y 48 --roi_z 32 \
	--dataset btcv --data_dir $(DEMO_OUT)/data --json_list dataset.json --infer_overlap 0.25 \
	--pretrained_path $(DEMO_OUT)/model/model_best.pt --device cpu --workers 2

demo: $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO_OUT)

# the demo, then the README's demo tables and figure rewritten from it (a finished demo is reused)
readme-figures: $(STAMP)
	$(PY) scripts/readme_figures.py --out $(DEMO_OUT)

# the demo's trained model and data (order-only: a newer venv does not retrain it). The stamp is made
# only when the demo finished: a model_best.pt of a stopped training is not taken for a trained model
# (and, not being a target, is never deleted by make when a signal ends the recipe).
$(DEMO_OUT)/model/.demo_finished: | $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO_OUT)
	touch $@

# the paper's Tables 2 and 4 (VAFA vs q_max, vs block size) on the demo data, at reduced steps, on CPU
paper-demo: $(DEMO_OUT)/model/.demo_finished | $(STAMP)
	$(PY) scripts/sweep.py --preset table2 --out $(PAPER_DEMO_OUT)/table2 --steps $(PAPER_DEMO_STEPS) $(DEMO_FLAGS) $(PAPER_DEMO_ARGS)
	$(PY) scripts/sweep.py --preset table4 --out $(PAPER_DEMO_OUT)/table4 --steps $(PAPER_DEMO_STEPS) $(DEMO_FLAGS) $(PAPER_DEMO_ARGS)

# the paper's Table 6 on the demo data: the demo model fine-tuned clean, with PGD, VAFA and VAFT (both VAFA forms),
# each attacked with PGD, FGSM, BIM, VAFA (both forms) and APGD, on CPU; a rerun reuses what is finished
robust-demo: $(DEMO_OUT)/model/.demo_finished | $(STAMP)
	$(PY) scripts/robust_demo.py --out $(ROBUST_DEMO_OUT) $(DEMO_FLAGS) $(ROBUST_DEMO_ARGS)
