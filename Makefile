# fedn: `make demo` runs a local federation, `make test` runs lint and the whole suite.
# Both set up .venv themselves from a fresh clone.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# torch for the image lock: the CPU build, from the PyTorch CPU index (or a wheel already on disk)
TORCH_SOURCE ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install demo test lint audit lock unit fuzz bench chaos figures proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[server,torch,examples,plot,ray,dev]'
	# test-only servers (MongoDB wire protocol, S3): never runtime dependencies
	$(PY) -m pip install -q 'secantusdb==0.7.0b3' 'nanio==0.1.7'
	# the dashboard's browser test: Debian's chromium (Playwright cannot download browsers here)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }; } \
		|| echo "make install: chromium is missing and apt-get cannot install it (run as root: apt-get install chromium)" >&2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/fedn local --client examples.digits:DigitsClient --client-arg alpha=0.5 --client-arg seed=7 \
		--combiners 2 --clients 4 --rounds 6 --min-accuracy 0.90

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(MAKE) audit

# Known vulnerabilities in what the Docker image installs. Fails on any found; says NOT AUDITED (and
# passes, unless FEDN_AUDIT_REQUIRED=1) when the vulnerability service cannot be reached from here.
audit: install
	$(PY) .ci/audit.py requirements/docker.lock

# The Docker image's lock: every package pinned and hashed (the Dockerfile installs it with
# --require-hashes). Run after changing dependencies in pyproject.toml or requirements/docker.in.
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml requirements/docker.in --extra server --extra examples \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE) \
		--index-strategy unsafe-best-match --custom-compile-command 'make lock' -o requirements/docker.lock

test: lint
	$(PY) -m pytest -q -p no:cacheprovider tests

fuzz: install  # the property tests with new random examples each run (make test repeats one fixed draw)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/unit

unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) -m bench

figures: install  # the pictures in docs/img (deterministic from seeds; about 5 minutes)
	$(PY) -m bench.figures

chaos: install
	$(PY) -m tests.chaos.run --faults 100 --seed 1

# The stubs' generator, pinned and in its own venv: grpcio-tools 1.80.1 writes protobuf 6.31.1 gencode,
# which every runtime in pyproject's protobuf range (>=6.31.1,<8) accepts (flwr needs <7, TensorFlow
# >=6.31.1); a newer generator would write gencode that protobuf 6 refuses at import.
PROTO_TOOLS := grpcio-tools==1.80.1
PROTO_VENV  := build/proto-venv

proto:
	test -x $(PROTO_VENV)/bin/python || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install -q '$(PROTO_TOOLS)'
	$(PROTO_VENV)/bin/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/fedn/v1/fedn.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
