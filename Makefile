# sirdiff_ros without a ROS install: everything in a local venv.
#
#   make demo    set up (first run) and run the demo
#   make test    set up (first run) and run the tests
#
# `make venv` is idempotent: stamp files under $(VENV) are keyed on the inputs
# of each step (requirements/lock.txt, msg/*.msg, CMakeLists.txt, setup.py ...),
# so a repeated run only checks timestamps.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

REPO := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# Interpreter that creates the venv: the ROS 2 Kilted PyPI wheels are cp311.
PYTHON ?= python3.11
VENV ?= $(REPO)/.venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Always pinned: an unpinned torch pulls a multi-GB CUDA build. Where no local
# CPU wheel is configured for pip, TORCH_INDEX=https://download.pytorch.org/whl/cpu
# fetches the CPU build.
TORCH := torch==2.13.0
TORCH_INDEX ?=
# Build tools of the venv itself (pip freeze leaves them out of the lock);
# setuptools' "compat" editable mode is what makes the message namespace work.
BOOTSTRAP := pip==26.3 setuptools==84.2.1
# make test TESTS=test/test_foundation_messages.py PYTEST_ARGS="-x -q"
TESTS ?= test/
PYTEST_ARGS ?=
# Test processes (pytest-xdist; 0: one process). Each test file runs whole in one
# worker, each worker in its own DDS domain (test/conftest.py).
TEST_WORKERS ?= 2
DEMO_ARGS ?=
# Private DDS domain for everything make starts (override: make test ROS_DOMAIN_ID=23).
ROS_DOMAIN_ID = 57

# --- The environment of every command below, set here and only here. ------
# Discovery on this host only (Fast DDS multicasts on every interface otherwise),
# a private domain, the venv as the ament prefix (rmw and message lookup),
# Fast DDS with a 16 MB shared-memory segment (config/fastdds.xml), no model hub.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
export AMENT_PREFIX_PATH := $(VENV)
export FASTDDS_DEFAULT_PROFILES_FILE := $(REPO)/config/fastdds.xml
export HF_HUB_OFFLINE := 1
# Idle OpenMP threads sleep instead of spinning (a CPU shared with other jobs).
export OMP_WAIT_POLICY := PASSIVE
export PYTHONPATH := $(REPO)

STAMPS := $(VENV)/.stamps
MSG_FILES := $(wildcard $(REPO)/msg/*.msg)

.PHONY: venv venv-slam test lint demo demo-slam bench lock clean distclean eval-model validate-model

venv: $(STAMPS)/editable

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make venv: needs Python 3.11 (the ROS 2 Kilted wheels are cp311); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(BOOTSTRAP)

$(STAMPS)/torch: | $(PY)
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/requirements: $(REPO)/requirements/lock.txt $(STAMPS)/torch
	$(PIP) install --quiet -r $(REPO)/requirements/lock.txt "$(TORCH)"
	@touch $@

# Also installs scripts/restore_node, launch/ and config/ into the venv's
# lib/sirdiff_ros and share/sirdiff_ros (the layout ament_index expects).
$(STAMPS)/msgs: $(STAMPS)/requirements $(MSG_FILES) $(REPO)/CMakeLists.txt $(REPO)/package.xml $(REPO)/scripts/build_msgs.sh \
		$(REPO)/scripts/restore_node $(wildcard $(REPO)/launch/*.launch.py $(REPO)/config/*)
	$(REPO)/scripts/build_msgs.sh $(VENV) $(REPO)/build/venv-msgs
	@touch $@

# Editable, in compat mode (a .pth path entry): our regular package is found
# on sys.path and extends __path__ over the generated messages' directory.
$(STAMPS)/editable: $(STAMPS)/msgs $(REPO)/setup.py
	$(PIP) install --quiet --no-deps --no-build-isolation --config-settings editable_mode=compat -e $(REPO)
	@touch $@

# The optional extra sirdiff_ros[slam] (ORB-SLAM3 bindings, evo), exact pins.
venv-slam: $(STAMPS)/slam

$(STAMPS)/slam: $(REPO)/requirements/slam.txt $(STAMPS)/editable
	$(PIP) install --quiet -r $(REPO)/requirements/slam.txt
	@touch $@

test: venv
	cd $(REPO) && $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(TESTS) $(PYTEST_ARGS)

# The linter and the type checker alone (make test runs them too: test/test_code_quality.py).
lint: venv
	cd $(REPO) && $(PY) -m ruff check . && $(PY) -m mypy --config-file mypy.ini

demo: venv
	cd $(REPO) && $(PY) -m sirdiff_ros.ros.demo $(DEMO_ARGS)

# ORB-SLAM3 in the loop over DDS (installs the optional SLAM extra first).
demo-slam: venv-slam
	cd $(REPO) && $(PY) -m sirdiff_ros.slam.demo $(DEMO_ARGS)

bench: venv
	cd $(REPO) && for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

# The held-out measurement of a SIR-Diff checkpoint (default: the shipped one; docs/model.md).
eval-model: venv
	cd $(REPO) && PY=$(PY) scripts/eval_model.sh "$(CHECKPOINT)" $(or $(EVAL_OUT),runs/eval_model) heldout

# The same on validation data (training-split seeds no cache holds): what chooses between weights.
validate-model: venv
	cd $(REPO) && PY=$(PY) scripts/eval_model.sh "$(CHECKPOINT)" $(or $(EVAL_OUT),runs/validate_model) val

# Regenerate the exact pins from the current venv (scripts/lock.py says what
# it leaves out and why).
lock: venv
	$(PY) $(REPO)/scripts/lock.py $(REPO)/requirements/lock.txt

clean:
	rm -rf $(REPO)/build $(REPO)/.pytest_cache $(REPO)/sirdiff_ros.egg-info
	find $(REPO)/sirdiff_ros $(REPO)/test $(REPO)/bench -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
