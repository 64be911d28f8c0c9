# stnet-records: every target runs inside .venv (built by `make setup`).
SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The project is installed into .venv (editable): its packages import from any directory, and the
# caller's PYTHONPATH (CANN's set_env.sh puts its TBE/op-impl Python paths there) passes untouched.

CONFIG ?= configs/demo.yaml
# A variable's value as one shell word, exactly as given: $(value) keeps a $ in it from make, and
# single quotes (each ' written '\'') keep spaces, $, backquotes and " from the shell.
shell_quote = '$(subst ','\'',$(1))'
quoted = $(call shell_quote,$(value $(1)))
# msrun's master port: unset, a single-node job takes a free one (scripts/port.py); several nodes
# must give the same MASTER_PORT; a given port that is taken here fails at once.
MASTER_PORT ?=
# Real Kinetics: make records CSV=kinetics400/train.csv VIDEOS=kinetics400/train SPLIT=train OUT=records/kinetics400
CSV ?=
VIDEOS ?=
SPLIT ?= train
OUT ?= records/kinetics400
WORKERS ?= 2
# How records store frames: h264 or jpeg (datatools.convert --codec; README: choosing a codec).
# Unset: the converter's default. The demo's records and run get a folder per codec given.
CODEC ?=
CODEC_ARG = $(if $(CODEC),--codec $(CODEC))

# msrun: workers on this node (8 Ascend devices, or 8 CPU processes for the demo); multi-node runs add
# NNODES / NODE_RANK / MASTER_ADDR (see README).
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MSRUN_LOG ?= runs/msrun-logs
# A quiet console: MindSpore's own log (C++ and Python, GLOG_v) shows errors only; its warnings
# under msrun are mostly retries of the cluster's start-up that look fatal and are not.
# VERBOSE=1 (or the caller's own GLOG_v) shows them again; msrun's worker logs keep every line the
# workers print.
VERBOSE ?=
ifeq ($(VERBOSE),)
export GLOG_v ?= 3
endif
MSRUN = port=$$($(PY) scripts/port.py $(NNODES) $(MASTER_PORT)) || exit 2; \
	msrun --worker_num=$$(( $(NPROC) * $(NNODES) )) --local_worker_num=$(NPROC) \
	--master_addr=$(MASTER_ADDR) --master_port=$$port --node_rank=$(NODE_RANK) \
	--log_dir=$(MSRUN_LOG) --join=True
CKPT ?=
# Without CKPT, eval and export use the run's best.ckpt (runs/<name>/best.ckpt).
CKPT_ARG = $(if $(value CKPT),--ckpt $(call quoted,CKPT))

.PHONY: setup test test-fast test-e2e records train train-8p eval predict package-310 export-310 demo

setup: $(VENV)/.installed

# requirements.txt is the pinned lock of pyproject.toml's dependencies (tests/test_packaging.py);
# the project itself goes in editable, without resolving its dependencies a second time.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation --editable .
	touch $@

# The whole suite (CI runs it; pytest.ini lists the 15 slowest tests at the end), and the inner
# loop: everything but the tests marked slow (training runs, msrun jobs, Dask clusters).
# TEST_WORKERS pytest-xdist processes, each given whole test files (their module fixtures are built
# once) and all the tests of the trained demo model (tests/conftest.py groups them).
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
test: setup
	$(PYTEST) --ignore=tests/e2e tests

test-fast: setup
	$(PYTEST) --ignore=tests/e2e -m "not slow" tests

# End to end, minutes each (.ci/run runs them after `make test`): the whole demo, Ctrl-C'd in its
# first epoch and run again; train and eval on a split of 2,000 shards under open-file limits.
test-e2e: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

# What every target runs with, as its python sees it: interpreter, PYTHONPATH, sys.path, where the
# project is imported from, MindSpore version and default device. On an Ascend host: are CANN's
# set_env.sh paths there, is it Ascend?
.PHONY: env
env:
	@test -x $(PY) || { echo "error: $(PY) not found: run make setup" >&2; exit 1; }
	@$(PY) -c 'import os, sys; \
		print("python:", sys.executable, sys.version.split()[0]); \
		print("PYTHONPATH:", os.environ.get("PYTHONPATH", "<unset>")); \
		print("sys.path:", *(p for p in sys.path if p), sep="\n  "); \
		import trainer; print("trainer:", trainer.__file__); \
		import mindspore as ms; \
		print("mindspore:", ms.__version__, "device_target:", ms.get_current_device().device_target)'

records: setup
ifeq ($(CSV),)
	$(MAKE) --no-print-directory data/demo/train.csv
	$(PY) -m datatools.labels data/demo/train.csv $(DEMO_RECORDS)/labels.txt
	for split in train val; do \
		$(PY) -m datatools.convert --csv data/demo/$$split.csv --videos data/demo/videos \
			--labels $(DEMO_RECORDS)/labels.txt --out $(DEMO_RECORDS)/$$split --short-side 64 \
			--videos-per-shard 16 --page-mb 1 --workers $(WORKERS) $(CODEC_ARG) || exit 1; \
		$(PY) -m datatools.inspect $(DEMO_RECORDS)/$$split || exit 1; \
	done
else
	@# The label file comes from the first split converted (train); later splits reuse it.
	test -f $(call quoted,OUT)/labels.txt || \
		$(PY) -m datatools.labels $(call quoted,CSV) $(call quoted,OUT)/labels.txt
	$(PY) -m datatools.convert --csv $(call quoted,CSV) --videos $(call quoted,VIDEOS) \
		--labels $(call quoted,OUT)/labels.txt --out $(call quoted,OUT)/$(call quoted,SPLIT) \
		--workers $(WORKERS) $(CODEC_ARG)
	$(PY) -m datatools.inspect $(call quoted,OUT)/$(call quoted,SPLIT)
endif

# The demo's records: records/demo in the converter's default codec, records/demo-<codec> for
# another CODEC given (a split keeps the settings it was converted with).
DEMO_RECORDS = records/demo$(if $(CODEC),-$(CODEC))

# The demo's synthetic source videos (made once; delete data/demo to make them again).
data/demo/train.csv:
	$(PY) -m datatools.synth --out data/demo --classes 4 --per-class 150 --val-per-class 25 --seed 0

train: setup
	$(PY) -m trainer.train --config $(CONFIG) $(ARGS)

train-8p: NPROC ?= 8
train-8p: setup
	$(MSRUN) --tail_worker_log=0 scripts/launch.py trainer.train --config $(CONFIG) $(ARGS)

eval: NPROC ?= 1
eval: setup
# NPROC as given to make (ifeq is read before the target's default applies): unset or 1, one process.
ifeq ($(filter-out 1,$(NPROC)),)
	$(PY) -m trainer.eval --config $(CONFIG) $(CKPT_ARG) $(ARGS)
else
	@# Workers print C++ shutdown lines after their result: the console gets no worker log (an
	@# index past the workers) and the result line is printed last, from rank 0's log.
	$(MSRUN) --tail_worker_log=9999 scripts/launch.py trainer.eval --config $(CONFIG) $(CKPT_ARG) $(ARGS) \
		|| { tail -n 20 $(MSRUN_LOG)/worker_0.log; exit 1; }
	@grep '^top1=' $(MSRUN_LOG)/worker_0.log | tail -n 1
endif

# Top classes of one video file, decoded as the records in the config's data.root were converted:
# make predict VIDEO="videos/abseiling/x.mp4" [CKPT=...] [ARGS="--window 10 --out p.jsonl test.crops=3"]
VIDEO ?=
predict: setup
	@test -n $(call quoted,VIDEO) || { echo 'error: VIDEO is empty: make predict VIDEO=path/to/video.mp4' >&2; exit 2; }
	$(PY) -m trainer.predict --config $(CONFIG) $(CKPT_ARG) $(call quoted,VIDEO) $(ARGS)

# 310 path on two hosts. Host 1 (this checkout): `make package-310` exports a batch-1 MINDIR that
# takes uint8 clips (normalization inside the graph), writes the val clips as uint8 .bin and
# gathers model, clips, labels and the runner/postprocess code into $(PACKAGE_310). Copy that
# folder to the 310 host (CANN + numpy + MindSpore Lite for Ascend: see its requirements-310.txt)
# and run `bash run.sh Ascend 0` there (the Lite route is untested here). `make export-310` does
# both halves on this host, running the package with INFER_DEVICE (CPU: MindSpore).
# Each run's package goes to export/<name>/310 (name: the config's, or name= in ARGS), so two runs
# never share one.
RUN_NAME = $(shell $(PY) -m trainer.show_config --config $(CONFIG) $(ARGS) --key name 2>/dev/null)
OUT_310 ?= export/$(RUN_NAME)/310
PACKAGE_310 ?= $(OUT_310)/package
INFER_DEVICE ?= CPU
package-310: setup
	@test -n "$(RUN_NAME)" || $(PY) -m trainer.show_config --config $(CONFIG) $(ARGS) --key name
	$(PY) -m trainer.export --config $(CONFIG) $(CKPT_ARG) --format MINDIR --batch 1 --input uint8 \
		--out $(OUT_310) $(ARGS)
	$(PY) -m trainer.infer310.preprocess --config $(CONFIG) --out $(OUT_310) $(ARGS)
	$(PY) -m trainer.infer310.package --model $(OUT_310)/stnet_b1.mindir --work $(OUT_310) \
		--out $(PACKAGE_310)

export-310: package-310
	PYTHON=$(CURDIR)/$(PY) bash $(PACKAGE_310)/run.sh $(INFER_DEVICE)

# synth -> records -> train (NPROC msrun workers) -> eval -> export + 310 path, on CPU. Finished
# stages are reused: existing videos and verified shards are kept, training resumes (and skips
# when done). CI runs it short: DEMO_NAME=ci-demo DEMO_TRAIN_ARGS="train.epochs=1" NPROC=2.
DEMO_CONFIG := configs/demo.yaml
DEMO_NAME ?= demo$(if $(CODEC),-$(CODEC))
DEMO_TRAIN_ARGS ?=
DEMO_ARGS = name=$(DEMO_NAME) data.root=$(DEMO_RECORDS)
demo: setup
	@echo "== demo 1/4: synthetic videos -> $(DEMO_RECORDS)"
	$(MAKE) --no-print-directory records
	@echo "== demo 2/4: train $(DEMO_CONFIG) under msrun -> runs/$(DEMO_NAME)"
	$(MAKE) --no-print-directory train-8p CONFIG=$(DEMO_CONFIG) \
		ARGS="$(DEMO_ARGS) train.resume=auto $(DEMO_TRAIN_ARGS)"
	@echo "== demo 3/4: evaluate runs/$(DEMO_NAME)/best.ckpt on every val video"
	$(MAKE) --no-print-directory eval CONFIG=$(DEMO_CONFIG) NPROC=1 \
		ARGS="$(DEMO_ARGS) --out runs/$(DEMO_NAME)/eval.json"
	@echo "== demo 4/4: export MINDIR + 310 inference path (CPU runner)"
	$(MAKE) --no-print-directory export-310 CONFIG=$(DEMO_CONFIG) ARGS="$(DEMO_ARGS)"
	@$(PY) -c "import json; r = json.load(open('runs/$(DEMO_NAME)/eval.json')); \
		print(f'== demo done: top1={r[\"top1\"]:.4f} on {r[\"videos\"]} val videos (runs/$(DEMO_NAME))')"
