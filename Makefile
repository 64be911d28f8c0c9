# stnet-records: every target runs inside .venv (built by `make setup`).
SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

CONFIG ?= configs/demo.yaml
NPROC ?= 8
EVAL_NPROC ?= 1
MASTER_PORT ?= 8118
# Real Kinetics: make records CSV=kinetics400/train.csv VIDEOS=kinetics400/train SPLIT=train OUT=records/kinetics400
CSV ?=
VIDEOS ?=
SPLIT ?= train
OUT ?= records/kinetics400
WORKERS ?= 2

.PHONY: setup test records train train-8p eval export-310 demo clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

records: setup
ifeq ($(CSV),)
	$(PY) -m datatools.synth --out data/demo --classes 4 --per-class 40 --seed 0
	$(PY) -m datatools.labels data/demo/train.csv records/demo/labels.txt
	$(PY) -m datatools.convert --csv data/demo/train.csv --videos data/demo/videos \
		--labels records/demo/labels.txt --out records/demo/train --workers $(WORKERS)
	$(PY) -m datatools.convert --csv data/demo/val.csv --videos data/demo/videos \
		--labels records/demo/labels.txt --out records/demo/val --workers $(WORKERS)
else
	$(PY) -m datatools.labels $(CSV) $(OUT)/labels.txt
	$(PY) -m datatools.convert --csv $(CSV) --videos $(VIDEOS) --labels $(OUT)/labels.txt \
		--out $(OUT)/$(SPLIT) --workers $(WORKERS)
endif
