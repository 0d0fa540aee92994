"""A scripted walk through the desktop app, as a person uses it, with screenshots: `make walkthrough`.

    xvfb-run -a -s "-screen 0 1280x800x24" python -m ntk_studio.app.walkthrough --size 1280x800 --out docs/images

Start (sine: data points and the pretrained curve before any run), Adapt, cancel with Esc after the
posterior is ready and with the button, export ONNX and the predictions, save plots, save the
project, load another example, reopen the project, then every other example; finally a 3,000-epoch
run while a 10 ms timer measures the event loop's longest stall. ``--quick`` does start, sine and
faces only (the other screen sizes). Esc goes through the X server (xdotool) when it is there.
Screenshots are of the whole X screen (ImageMagick's ``import``) or, without it, the window.
Prints one line per step; exits non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEP_TIMEOUT_S = 600  # faces on two shared CPU cores
LONG_EPOCHS = 1_000_000
STALL_EPOCHS = 3000
TICK_MS = 10
EXAMPLES = ("hprice3", "diabetes", "faces")


class Walk:
    """Drives one window through the steps; `wait` runs the event loop until a signal (or times out)."""

    def __init__(self, app, window, out: Path, size: tuple[int, int]) -> None:
        self.app, self.w, self.out, self.size = app, window, out, size
        self.tmp = Path(tempfile.mkdtemp(prefix="ntk-walk-"))
        self.failures: list[str] = []

    def wait(self, signal, timeout_s: float = STEP_TIMEOUT_S, check=None):
        from PySide6.QtCore import QEventLoop, QTimer

        loop, got = QEventLoop(), []

        def slot(*args) -> None:
            if check is None or check(*args):
                got.append(args)
                loop.quit()

        signal.connect(slot)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        signal.disconnect(slot)
        if not got:
            raise TimeoutError(f"no {signal} within {timeout_s} s")
        return got[0]

    def settle(self, ms: int = 400) -> None:
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def shot(self, name: str) -> Path:
        self.settle()
        path = self.out / f"{name}-{self.size[0]}x{self.size[1]}.png"
        if shutil.which("import") and not self._offscreen():
            subprocess.run(["import", "-window", "root", str(path)], check=True, timeout=60)
        else:
            self.w.grab().save(str(path), "PNG")
        print(f"screenshot {path}")
        return path

    def _offscreen(self) -> bool:
        return self.app.platformName() == "offscreen"

    def step(self, name: str, fn) -> None:
        started = time.monotonic()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report every failed step, go on with the next
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAILED {name}: {exc}")
            if self.w.running:
                self.w.cancel()
                self.wait(self.w.run_finished, 30)
            return
        print(f"ok {name} ({time.monotonic() - started:.1f} s)")

    # ------------------------------------------------------------------ steps
    def adapt(self, epochs: int | None = None) -> bool:
        if epochs is not None:
            self.w.method_panel.epochs.setValue(epochs)
        self.w.adapt_button.click()
        (ok,) = self.wait(self.w.run_finished)
        if not ok:
            raise RuntimeError(f"the run failed: {self.w.errors[-1:] or self.w.statusBar().currentMessage()}")
        return ok

    def load(self, name: str) -> None:
        self.w.load_example(name)
        self.wait(self.w.run_finished)
        if self.w.running:
            raise RuntimeError("still running after the load")

    def press_escape(self) -> None:
        if shutil.which("xdotool") and not self._offscreen():
            geo = self.w.geometry()
            subprocess.run(["xdotool", "mousemove", str(geo.x() + geo.width() // 2), str(geo.y() + geo.height() // 2)],
                           check=False, timeout=10)
            subprocess.run(["xdotool", "key", "Escape"], check=True, timeout=10)
        else:
            from PySide6.QtCore import Qt
            from PySide6.QtTest import QTest

            QTest.keyClick(self.w.focusWidget() or self.w, Qt.Key.Key_Escape)

    def panel_tabs(self) -> None:
        for index, name in ((1, "model"), (2, "method")):
            self.w.panels.setCurrentIndex(index)
            self.shot(f"02-sine-{name}-tab")
        self.w.panels.setCurrentIndex(0)

    def cancel_with_escape(self) -> None:
        self.w.method_panel.epochs.setValue(LONG_EPOCHS)
        self.w.adapt_button.click()
        self.wait(self.w.gp_done)  # the posterior is ready; fine-tuning runs
        self.wait(self.w.bridge.epoch, 60, check=lambda job, ev: ev.get("epoch", 0) > 0)
        self.press_escape()
        (ok,) = self.wait(self.w.run_finished, 30)
        if ok or self.w.running:
            raise RuntimeError("Esc did not cancel the run")
        self.shot("03-cancelled-with-esc")

    def cancel_with_button(self) -> None:
        self.w.method_panel.epochs.setValue(LONG_EPOCHS)
        self.w.adapt_button.click()
        self.wait(self.w.bridge.epoch, 120, check=lambda job, ev: ev.get("epoch", 0) > 0)
        self.w.cancel_button.click()
        (ok,) = self.wait(self.w.run_finished, 30)
        if ok or "left" in self.w.progress_bar.text():
            raise RuntimeError(f"cancel left: ok={ok}, progress {self.w.progress_bar.text()!r}")

    def exports(self) -> None:
        self.w.method_panel.epochs.setValue(100)
        self.adapt()
        onnx = self.tmp / "adapted.onnx"
        self.w.exporter.export(onnx)
        self.wait(self.w.exporter.exported)
        csv = self.w.exports.save_predictions(self.tmp / "predictions.csv")
        svg = self.w.exports.save_plot(self.out / f"plot-sine-{self.size[0]}x{self.size[1]}.svg")
        png = self.w.exports.save_plot(self.tmp / "plot.png")
        for path in (onnx, csv, svg, png):
            print(f"  wrote {path.name}: {path.stat().st_size:,} bytes, mode {path.stat().st_mode & 0o777:o}")

    def save_and_reopen(self) -> None:
        project = self.w.save_project(self.tmp / "walk.ntkproj")
        before = self.w.view.fit_plot.curve_data("gp_mean")[1].copy()
        self.load("hprice3")
        self.w.open_project(str(project))
        self.wait(self.w.run_finished)
        after = self.w.view.fit_plot.curve_data("gp_mean")[1]
        if not np.array_equal(before, after):
            raise RuntimeError("the reopened project does not show the saved GP")
        self.shot("04-project-reopened")

    def example(self, name: str) -> None:
        self.load(name)
        self.shot(f"05-{name}-loaded")
        self.adapt()
        self.shot(f"06-{name}-adapted")
        if name == "faces":
            self.w.view.tabs.setCurrentIndex(1)
            self.shot("07-faces-reliability")
            self.w.view.tabs.setCurrentIndex(2)
            self.shot("08-faces-solver")
            self.w.view.tabs.setCurrentIndex(0)

    def stall(self) -> None:
        from PySide6.QtCore import QTimer

        self.load("sine")
        self.adapt(30)  # warm: first paints load fonts and caches once
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(TICK_MS)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start()
        try:
            self.adapt(STALL_EPOCHS)
        finally:
            timer.stop()
        gaps = np.diff(ticks) * 1000
        print(f"  event-loop stall during a {STALL_EPOCHS:,}-epoch run: longest {gaps.max():.1f} ms, "
              f"99th percentile {np.percentile(gaps, 99):.1f} ms, median {np.median(gaps):.1f} ms over {len(ticks)} ticks")


def main(argv: list[str] | None = None) -> int:
    """Run the walk-through; return 0 when every step passed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1280x800", help="window size WxH (default 1280x800)")
    p.add_argument("--out", default="docs/images", help="folder for the screenshots")
    p.add_argument("--quick", action="store_true", help="start, sine and faces only")
    p.add_argument("--stall", action="store_true", help="only the 3,000-epoch stall measurement")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from . import startup
    from .main_window import MainWindow
    from .recent import Store

    app = startup.create_application()
    settings = Path(tempfile.mkdtemp(prefix="ntk-walk-settings-")) / "settings.json"
    window = MainWindow("sine", interactive_errors=False, store=Store(settings))
    window.setGeometry(0, 0, width, height)
    window.show()
    walk = Walk(app, window, out, (width, height))
    try:
        walk.wait(window.run_finished)
        if args.stall:
            walk.step("stall", walk.stall)
        else:
            walk.step("start", lambda: walk.shot("01-start-sine"))
            walk.step("adapt sine", lambda: (walk.adapt(), walk.shot("02-sine-adapted")))
            walk.step("panel tabs", walk.panel_tabs)
            if not args.quick:
                walk.step("cancel with Esc", walk.cancel_with_escape)
                walk.step("cancel with the button", walk.cancel_with_button)
                walk.step("export", walk.exports)
                walk.step("save and reopen", walk.save_and_reopen)
            for name in (("faces",) if args.quick else EXAMPLES):
                walk.step(f"example {name}", lambda n=name: walk.example(n))
    finally:
        window.bridge.shutdown()
        window.close()
    for failure in walk.failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if walk.failures else 0


if __name__ == "__main__":
    sys.exit(main())
