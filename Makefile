# One way to install and run humanim: `make demo` and `make test` work on a fresh Linux machine with
# Python 3.10+ and nothing else installed by hand (no root, no system ffmpeg: PyAV bundles FFmpeg).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HUMANIM_CACHE ?= $(CURDIR)/.cache
# Anny builds a 0.8 GB cache on first use; keep it inside the project's ignored cache, shared by all runs.
export ANNY_CACHE_DIR ?= $(HUMANIM_CACHE)/anny
# Pinned CPU build used only where no torch is installed; an existing torch (a GPU user's CUDA build) is kept.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "keeping the installed torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	  echo "torch==$$($(PYTHON) -c 'import torch; print(torch.__version__)')" > $(VENV)/torch-pin.txt; \
	else \
	  $(PYTHON) -m venv $(VENV); \
	  echo "$(TORCH_CPU)" > $(VENV)/torch-pin.txt; \
	fi
	cat constraints.txt $(VENV)/torch-pin.txt > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt "$$(cat $(VENV)/torch-pin.txt)"
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	# MediaPipe 0.10.14 is the last release whose legacy Holistic weights ship in the wheel (the offline pose
	# back-end); its declared dependencies would pull jax and a protobuf it breaks on, so it goes in alone.
	$(BIN)/python -m pip install -q --no-deps mediapipe==0.10.14
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt absl-py attrs flatbuffers matplotlib
	# Several dependencies each ask for a different OpenCV wheel, and all of them write the same cv2/
	# folder; keep exactly one, the headless contrib build (no libGL needed on servers).
	$(BIN)/python -m pip uninstall -q -y opencv-python opencv-contrib-python opencv-python-headless opencv-contrib-python-headless
	$(BIN)/python -m pip install -q --no-deps -c $(VENV)/constraints.txt opencv-contrib-python-headless
	$(BIN)/python -c "import cv2, torch, av, ray, mediapipe, anny; print('installed: cv2', cv2.__version__, '| torch', torch.__version__, '| av', av.__version__, '| ray', ray.__version__)"
	touch $(STAMP)

demo: install
	$(BIN)/humanim demo demo-out

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) .cache demo-out
