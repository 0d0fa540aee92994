"""`export_predictor`: write a fitted GP or classifier as ONNX and/or a torch.export program, verified."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ..classify import PROBIT_APPROXIMATIONS, LinearizedClassifier, resolve_proba_method
from ..errors import ExportError, ExportVerificationError, ShapeError
from ..gp import LinearizedGP
from .files import (
    METADATA_PREFIX,
    MissingKernelError,
    export_program,
    onnx_session,
    write_native,
    write_onnx,
)
from .posterior import LinearPosterior, posterior_from_classifier, posterior_from_gp
from .program import (
    CLASSIFICATION_OUTPUTS,
    REGRESSION_OUTPUTS,
    TracedPredictor,
    example_batch,
    predictor_function,
    trace,
)

VERIFY_BATCHES = (1, 7, 1000)
VERIFY_RTOL = 1e-4  # the largest relative error an export may have against the in-app prediction
OUTPUT_DOCS = {
    "mean": "posterior mean f(x; θ*) + J(x)Δθ, target units, (batch, K)",
    "variance": "predictive variance of a new observation: f_variance + noise, target units², (batch, K)",
    "f_variance": "posterior variance of the latent function (noise excluded), target units², (batch, K)",
    "probabilities": "predictive class probabilities (probit approximation), (batch, C)",
    "logits": "posterior mean of the linearized logits, (batch, C)",
    "logits_covariance": "posterior covariance of the linearized logits, (batch, C, C)",
}
VARIANCE_OUTPUTS = ("variance", "f_variance")


@dataclass
class ExportReport:
    """What was written and how well it matched the in-app predictions."""

    task: str
    outputs: tuple[str, ...]
    num_params: int
    posterior_rank: int
    dtype: str
    onnx_path: Path | None = None
    onnx_bytes: int = 0
    native_path: Path | None = None
    native_bytes: int = 0
    # format → batch size → output → relative error against the in-app prediction
    errors: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def max_error(self) -> float:
        """Return the largest relative error over formats, batch sizes and outputs."""
        return max((e for per in self.errors.values() for b in per.values() for e in b.values()), default=0.0)

    def to_json(self) -> dict:
        """Return a JSON-serializable summary."""
        return {
            "task": self.task, "outputs": list(self.outputs), "num_params": self.num_params,
            "posterior_rank": self.posterior_rank, "dtype": self.dtype,
            "onnx": str(self.onnx_path) if self.onnx_path else None, "onnx_bytes": self.onnx_bytes,
            "native": str(self.native_path) if self.native_path else None, "native_bytes": self.native_bytes,
            "max_relative_error": self.max_error(),
            "errors": {fmt: {str(b): e for b, e in per.items()} for fmt, per in self.errors.items()},
            "seconds": self.seconds,
        }


def relative_error(name: str, got: np.ndarray, ref: np.ndarray) -> float:
    """Return the error of `got`: elementwise relative for variances, relative to max|ref| otherwise."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf")
    if name in VARIANCE_OUTPUTS:
        floor = 1e-12 * max(float(np.abs(ref).max(initial=0.0)), 1e-300)
        return float((np.abs(got - ref) / np.maximum(np.abs(ref), floor)).max(initial=0.0))
    return float(np.abs(got - ref).max(initial=0.0) / max(float(np.abs(ref).max(initial=0.0)), 1e-300))


def reference_outputs(predictor, X_raw: torch.Tensor, stats, method: str) -> dict[str, np.ndarray]:
    """Return the in-app predictions for raw inputs, named like the exported outputs."""
    Xs = X_raw if stats is None else stats.transform_x(X_raw)
    if isinstance(predictor, LinearizedClassifier):
        mean, cov = predictor.predict_logits(Xs)
        # The same closed form predict_proba applies, on the logits already computed.
        proba = PROBIT_APPROXIMATIONS[resolve_proba_method(method, mean.shape[1])](mean, cov)
        return {"probabilities": proba.numpy(), "logits": mean.numpy(), "logits_covariance": cov.numpy()}
    mean, var = predictor.predict(Xs)
    mean, var = mean.reshape(X_raw.shape[0], -1).numpy(), var.reshape(X_raw.shape[0], -1).numpy()
    noise = np.full_like(var, predictor.noise)
    if stats is not None:
        mean, var, noise = stats.inverse_y_mean(mean), stats.inverse_y_var(var), stats.inverse_y_var(noise)
    return {"mean": mean, "variance": var + noise, "f_variance": var}


def _metadata(post: LinearPosterior, predictor, stats, outputs, X_check: torch.Tensor, dtype,
              feature_names, class_names, source_sha256, method: str) -> dict[str, str]:
    lm = predictor.lm

    def arr(a):
        return None if a is None else np.asarray(a, np.float64).ravel().tolist()

    meta = {
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": post.task,
        "input": json.dumps({"name": "x", "dtype": str(dtype).replace("torch.", ""),
                             "shape": ["batch", *[int(d) for d in X_check.shape[1:]]],
                             "units": "raw (standardization is applied inside the graph)"}),
        "outputs": json.dumps({name: OUTPUT_DOCS[name] for name in outputs}),
        "hyperparameters": json.dumps({"prior_var": post.prior_var, "noise": post.noise}),
        "parameter_subset": json.dumps({"names": list(lm.subset.names), "num_params": lm.num_params}),
        "posterior": json.dumps({"rank": post.rank, "form": "s2 (I - V V^T) + V diag(scale^2) V^T"}),
        "input_standardization": json.dumps({"mean": arr(getattr(stats, "x_mean", None)),
                                             "scale": arr(getattr(stats, "x_scale", None)),
                                             "per_channel": bool(getattr(stats, "per_channel", False))}),
        "output_standardization": json.dumps({"mean": arr(getattr(stats, "y_mean", None)),
                                              "scale": arr(getattr(stats, "y_scale", None))}),
        "feature_names": json.dumps(list(feature_names) if feature_names else None),
        "class_names": json.dumps(list(class_names) if class_names else None),
        "source_model_sha256": source_sha256 or "",
    }
    if post.task == "classification":
        meta["probability_method"] = resolve_proba_method(method, lm.output_dim)
    return meta


def _check_rows(X: torch.Tensor, n: int) -> torch.Tensor:
    return X[torch.arange(n) % X.shape[0]]


def _compare(fmt: str, run, X_check: torch.Tensor, ref_fn, outputs, batches, tolerance, report: ExportReport,
             path: Path) -> None:
    per_batch = {}
    for b in batches:
        X = _check_rows(X_check, b)
        got = run(X)
        ref = ref_fn(X)
        errs = {name: relative_error(name, g, ref[name]) for name, g in zip(outputs, got)}
        per_batch[b] = errs
        worst = max(errs, key=errs.get)
        if not errs[worst] <= tolerance:
            path.unlink(missing_ok=True)
            raise ExportVerificationError(
                f"The {fmt} export differs from the in-app prediction: output {worst!r} at batch size {b} has "
                f"relative error {errs[worst]:.2e} > {tolerance:.0e}. The file was removed. Export in float64 "
                "(the default) or report this model to the NTK Studio developers."
            )
    report.errors[fmt] = per_batch


def export_predictor(
    predictor: LinearizedGP | LinearizedClassifier,
    X_check: torch.Tensor,
    onnx_path: str | Path | None = None,
    native_path: str | Path | None = None,
    *,
    standardizer=None,
    feature_names=None,
    class_names=None,
    source_sha256: str | None = None,
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
    tolerance: float = VERIFY_RTOL,
    batch_sizes: tuple[int, ...] = VERIFY_BATCHES,
) -> ExportReport:
    """Return the report after writing and verifying the requested files.

    `X_check` holds held-out inputs in raw units (what users will feed the file); each format is
    checked against the predictor's own predictions at every size in `batch_sizes` (rows cycled).
    `standardizer` (a :class:`~ntk_studio.core.data.Standardizer`) is applied inside the graph.
    """
    start = time.perf_counter()
    if onnx_path is None and native_path is None:
        raise ShapeError("Give onnx_path and/or native_path: there is nothing to write.")
    if dtype not in (torch.float32, torch.float64):
        raise ShapeError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
    X_check = torch.as_tensor(X_check).to(torch.float64)
    if X_check.dim() < 2 or X_check.shape[0] < 1:
        raise ShapeError("X_check must hold at least one held-out input row, shape (n, ...).")
    if isinstance(predictor, LinearizedClassifier):
        post, outputs = posterior_from_classifier(predictor), CLASSIFICATION_OUTPUTS
    elif isinstance(predictor, LinearizedGP):
        post, outputs = posterior_from_gp(predictor), REGRESSION_OUTPUTS
    else:
        raise ExportError(f"Cannot export a {type(predictor).__name__}: pass a fitted LinearizedGP or LinearizedClassifier.")
    example = example_batch(X_check).to(dtype)

    programs: dict[torch.dtype, torch.export.ExportedProgram] = {}

    def build(network_dtype: torch.dtype) -> torch.export.ExportedProgram:
        if network_dtype not in programs:
            fn = predictor_function(predictor.lm, post, standardizer, X_check.dim(), method, dtype, network_dtype)
            programs[network_dtype] = export_program(TracedPredictor(trace(fn, example)), example)
        return programs[network_dtype]

    # onnxruntime's CPU provider has no float64 Conv: CNNs go straight to a float32 network.
    has_conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in predictor.lm.model.modules())
    onnx_net = torch.float32 if has_conv else dtype
    report = ExportReport(post.task, outputs, predictor.lm.num_params, post.rank, _precision(dtype, onnx_net))
    meta = _metadata(post, predictor, standardizer, outputs, X_check, dtype, feature_names, class_names,
                     source_sha256, method)

    def ref_fn(X):
        return reference_outputs(predictor, X, standardizer, method)

    if onnx_path is not None:
        path = Path(onnx_path)
        report.onnx_bytes = write_onnx(build(onnx_net), path, outputs, {**meta, "precision": report.dtype},
                                       doc=_doc(post, outputs))
        try:
            session = onnx_session(path)
        except MissingKernelError:
            # Another operator without a float64 kernel: run the network in float32 and keep the
            # posterior algebra in float64; verification decides whether that is accurate enough.
            report.dtype = _precision(dtype, torch.float32)
            report.onnx_bytes = write_onnx(build(torch.float32), path, outputs, {**meta, "precision": report.dtype},
                                           doc=_doc(post, outputs))
            session = onnx_session(path)
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        _compare("onnx", lambda X: session.run(list(outputs), {"x": X.numpy().astype(np_dtype)}), X_check,
                 ref_fn, outputs, batch_sizes, tolerance, report, path)
        report.onnx_path = path
    if native_path is not None:
        path = Path(native_path)
        report.native_bytes = write_native(build(dtype), path, {**meta, "precision": _precision(dtype, dtype)})
        loaded = torch.export.load(str(path)).module()

        def run_native(X):
            with torch.no_grad():
                return [t.numpy() for t in loaded(X.to(dtype))]

        _compare("native", run_native, X_check, ref_fn, outputs, batch_sizes, tolerance, report, path)
        report.native_path = path
    report.seconds = time.perf_counter() - start
    return report


def _precision(dtype: torch.dtype, network_dtype: torch.dtype) -> str:
    name, net = str(dtype).replace("torch.", ""), str(network_dtype).replace("torch.", "")
    return name if name == net else f"{name} (network in {net})"


def _doc(post: LinearPosterior, outputs) -> str:
    lines = [f"NTK Studio {__version__}: linearized-network {post.task} with its exact posterior.",
             "Input 'x': raw inputs, (batch, ...). Outputs:"]
    lines += [f"  {name}: {OUTPUT_DOCS[name]}" for name in outputs]
    lines.append(f"Metadata keys start with '{METADATA_PREFIX}'.")
    return "\n".join(lines)
