# fairseq_kd: knowledge distillation for fairseq translation models.
#
#   make install   create .venv with torch, fairseq-fixed and this package (idempotent)
#   make test      install if needed, then the lint and the whole test suite [TEST_WORKERS=N]
#   make demo      install if needed, then run the main job on real data (teacher -> students -> results)
#   make toy-demo  the same story in two minutes on generated data

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fairseq_kd-installed

PRESET ?= default

TORCH_VERSION   ?= 2.13.0
FAIRSEQ_VERSION ?= 0.12.3.1

.PHONY: install test demo toy-demo lint clean

install: $(STAMP)

# The venv sees the system site-packages so that a machine which already has a
# (CUDA) torch keeps it; torch is installed only when none can be imported.
# fairseq-fixed ships as an sdist with C++/Cython extensions built against the
# installed torch: it must be built without build isolation, after torch.
$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install "numpy" "cython" "setuptools<81" "wheel"
	$(PY) -c "import fairseq" 2>/dev/null || \
		$(PIP) install --no-build-isolation "fairseq-fixed==$(FAIRSEQ_VERSION)"
	$(PIP) install -r requirements.txt
	$(PIP) install "transformers==5.25.0"  # the [hf] extra: fairseq-kd-import-hf
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import fairseq_kd, fairseq; print('fairseq', fairseq.__version__, '+ fairseq_kd ready')"
	touch $(STAMP)

# The suite in TEST_WORKERS processes (pytest-xdist; one per core by default), each test class in one of
# them: a class's tests share what its setUpClass made (the smoke run, a tiny teacher).
TEST_WORKERS ?= auto

test: install lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=20 tests

# make demo [PRESET=default|full|big] [LOCALE=de|fr|...] [DATA=dir with {train,valid,test}.{SRC,TGT} SRC=de TGT=en]
#           [METHODS=baseline,seq_kd,...] [OUT=dir] [TIMING_ROUNDS=N] [TEACHER_FROM=dir of a packed teacher]
demo: install
	$(PY) -m fairseq_kd.demo --preset $(PRESET) $(if $(LOCALE),--locale $(LOCALE)) $(if $(DATA),--data $(DATA)) \
		$(if $(SRC),--source-lang $(SRC)) $(if $(TGT),--target-lang $(TGT)) $(if $(METHODS),--methods $(METHODS)) \
		$(if $(OUT),--out $(OUT)) $(if $(TIMING_ROUNDS),--timing-rounds $(TIMING_ROUNDS)) \
		$(if $(TEACHER_FROM),--teacher-from $(TEACHER_FROM))

toy-demo: install
	PYTHON=$(PY) scripts/toy_demo.sh runs/toy

lint: install
	$(PY) -m black --check fairseq_kd scripts benchmarks tests setup.py
	$(PY) -m isort --check --profile black fairseq_kd scripts benchmarks tests
	$(PY) -m flake8 --select=E9,F63,F7,F82 fairseq_kd scripts benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info
