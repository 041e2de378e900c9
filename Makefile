# dynarec: `make demo` (set up + main job) and `make test` (set up + whole test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dynarec-installed
# torch is pinned HERE (CPU build, from the local wheel on these machines); pyproject keeps torch>=2.4.
TORCH  ?= torch==2.13.0
# the test suite exercises the optional extras for real (HTTP server, ONNX Runtime, FAISS, TorchRec on CPU); a user
# may install less (EXTRAS=dev,serve,onnx,faiss: the TorchRec tests then skip). TorchRec (9 MB, ~35 s) goes in with
# --no-deps: its metadata asks for the CUDA fbgemm-gpu, the torchrec extra brings fbgemm-gpu-cpu instead.
EXTRAS ?= dev,serve,onnx,faiss,torchrec
TORCHREC ?= torchrec==1.8.0

.PHONY: demo demo-quick test bench setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	case ",$(EXTRAS)," in *,torchrec,*) $(BIN)/pip install -q --no-deps $(TORCHREC);; esac
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/dynarec demo

demo-quick: $(STAMP)
	$(BIN)/dynarec demo --quick

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) dynarec-demo runs .pytest_cache
