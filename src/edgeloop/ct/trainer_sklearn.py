"""The ``[sklearn]`` extra: any scikit-learn estimator with an skl2onnx converter, behind the trainer interface.

The estimator is trained on float32 features (what serving feeds), converted with skl2onnx
(input ``input`` float32 [None, d]; classifiers give ``label`` and ``probabilities``, regressors
``variable``), and the ONNX model is accepted only if onnxruntime reproduces scikit-learn's own
predictions on the validation window.  scikit-learn and skl2onnx are imported only when used.

Work-around (skl2onnx 1.20 under protobuf 7): the HistGradientBoosting converter passes Python
``bool`` values of ``nodes_missing_value_tracks_true`` to ``onnx.helper.make_attribute``, and
protobuf 7 refuses a bool in a repeated int field (``TypeError: ... Expected an int, got a
boolean``).  :func:`_missing_tracks_as_int` wraps skl2onnx's ``tree_ensemble.add_node`` for the
duration of one conversion so that this one argument is passed as an ``int``; nothing else changes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgeloop.ct.onnx_export import INPUT, LABEL, OPSET, PROBABILITIES
from edgeloop.ct.trainers import (Dataset, TrainingError, TrainingReport, TrainResult, _check_inputs, _check_seed,
                                  _cut, class_labels)

#: skl2onnx's regressor output name.
VARIABLE = "variable"
#: ai.onnx.ml opset for the tree ensembles (onnxruntime >= 1.17 runs it).
ML_OPSET = 3
_PATCH_LOCK = threading.Lock()


def available() -> str | None:
    """None when the extra is installed, else why not (for skips and error messages)."""
    try:
        import sklearn  # noqa: F401
        import skl2onnx  # noqa: F401
    except ImportError as exc:
        return f"the [sklearn] extra is not installed ({exc}); pip install 'edgeloop[sklearn]'"
    return None


@contextlib.contextmanager
def _missing_tracks_as_int():
    """During one conversion, pass ``nodes_missing_value_tracks_true`` to skl2onnx's ``add_node`` as an int."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args, **kwargs):
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(kwargs["nodes_missing_value_tracks_true"])
        elif len(args) > 15:
            args = (*args[:15], int(args[15]), *args[16:])
        return original(*args, **kwargs)

    with _PATCH_LOCK:
        tree_ensemble.add_node = add_node
        try:
            yield
        finally:
            tree_ensemble.add_node = original


def convert(estimator, n_features: int, is_classifier: bool) -> bytes:
    """A fitted estimator as ONNX bytes with the edgeloop input/output names."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if is_classifier else None
    with _missing_tracks_as_int():
        proto = convert_sklearn(estimator, initial_types=[(INPUT, FloatTensorType([None, n_features]))],
                                options=options, target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    # skl2onnx may list a domain twice in opset_import; onnxruntime's quantisation tools then find no
    # usable ai.onnx entry.  Keep one entry per domain, at its highest version.
    versions = {}
    for entry in proto.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del proto.opset_import[:]
    for domain in sorted(versions):
        proto.opset_import.add(domain=domain, version=versions[domain])
    proto.graph.name = f"edgeloop_sklearn_{type(estimator).__name__}"  # skl2onnx names it with a random uuid
    names = [o.name for o in proto.graph.output]
    expected = [LABEL, PROBABILITIES] if is_classifier else [VARIABLE]
    if names != expected:
        raise TrainingError(f"skl2onnx outputs: {_cut(names)}; expected {expected}")
    return proto


@dataclass(frozen=True)
class SklearnTrainer:
    """Wraps an unfitted scikit-learn estimator (cloned for every fit; ``random_state`` set from the seed)."""

    estimator: object
    name: str = "sklearn"
    atol: float = 1e-4  # largest allowed |ONNX - scikit-learn| in probabilities / regression values
    min_label_agreement: float = 1.0  # fraction of validation rows whose ONNX label equals scikit-learn's

    def fit(self, train: Dataset, validation: Dataset, warm_start: bytes | None = None, seed: int = 0) -> TrainResult:
        why = available()
        if why:
            raise TrainingError(why)
        from sklearn.base import clone, is_classifier

        import onnxruntime as ort

        started = time.perf_counter()
        seed = _check_seed(seed)
        _check_inputs(train, validation)
        est = clone(self.estimator)
        if "random_state" in est.get_params():
            est.set_params(random_state=seed % 2**32)
        classifier = bool(is_classifier(est))
        y = class_labels(train.y, "train") if classifier else np.asarray(train.y, np.float64)
        kwargs = {} if train.weight is None else {"sample_weight": train.weight}
        try:
            est.fit(train.X, y, **kwargs)
        except TypeError as exc:
            raise TrainingError(f"estimator {type(est).__name__}: fit failed ({_cut(str(exc))}); sample weights "
                                "may be unsupported") from None
        proto = convert(est, train.n_features, classifier)
        meta = {"edgeloop.kind": "sklearn", "edgeloop.trainer": self.name, "edgeloop.estimator": type(est).__name__,
                "edgeloop.seed": str(seed), "edgeloop.n_train": str(len(train))}
        if classifier:
            meta["edgeloop.classes"] = json.dumps([int(c) for c in est.classes_])
        for key in sorted(meta):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, meta[key]
        data = proto.SerializeToString(deterministic=True)
        check = validation if len(validation) else train
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {INPUT: check.X})
        metrics = self._agreement(est, check, outputs, classifier)
        note = "cold start: scikit-learn estimators are not warm-started from ONNX" if warm_start is not None \
            else "cold start: no champion given"
        n_iter = getattr(est, "n_iter_", 0)
        params = {k: _cut(v, 80) for k, v in sorted(est.get_params(deep=False).items())}
        report = TrainingReport(
            trainer=self.name, params={"estimator": type(est).__name__, **params}, seed=seed, n_train=len(train),
            n_validation=len(validation), n_features=train.n_features,
            classes=tuple(int(c) for c in est.classes_) if classifier else (), warm_started=False,
            warm_start_note=note, iterations=int(np.max(n_iter)) if np.size(n_iter) else 0, converged=True,
            initial_loss=float("nan"), train_loss=float("nan"), validation=metrics, history=(),
            seconds=time.perf_counter() - started, model_sha256=hashlib.sha256(data).hexdigest())
        return TrainResult(data, report)

    def _agreement(self, est, check: Dataset, outputs, classifier: bool) -> dict:
        """Validation metrics, after refusing a model whose ONNX outputs differ from scikit-learn's."""
        if classifier:
            label, proba = np.asarray(outputs[0]), np.asarray(outputs[1])
            sk_label, sk_proba = est.predict(check.X), est.predict_proba(check.X)
            agree = float((label == sk_label).mean())
            gap = float(np.abs(proba - sk_proba).max())
            if agree < self.min_label_agreement or gap > self.atol:
                raise TrainingError(f"onnx check: ONNX labels agree with scikit-learn on {agree:.4%} of {len(check)} "
                                    f"validation rows (expected >= {self.min_label_agreement:.4%}), largest probability "
                                    f"gap {gap:.3g} (expected <= {self.atol:g})")
            y = class_labels(check.y, "validation")
            idx = np.searchsorted(est.classes_, y)
            known = (idx < len(est.classes_)) & (est.classes_[np.minimum(idx, len(est.classes_) - 1)] == y)
            p = np.where(known, proba[np.arange(len(y)), np.minimum(idx, proba.shape[1] - 1)], 0.0)
            return {"accuracy": float((label == y).mean()), "log_loss": float(-np.log(np.clip(p, 1e-15, 1)).mean()),
                    "onnx_label_agreement": agree, "onnx_max_probability_gap": gap}
        value = np.asarray(outputs[0]).reshape(-1)
        sk_value = np.asarray(est.predict(check.X), np.float64).reshape(-1)
        gap = float(np.abs(value - sk_value).max())
        scale = max(1.0, float(np.abs(sk_value).max()))
        if gap > self.atol * scale:
            raise TrainingError(f"onnx check: largest |ONNX - scikit-learn| on {len(check)} validation rows is "
                                f"{gap:.3g}; expected <= {self.atol * scale:.3g}")
        err = value - np.asarray(check.y, np.float64)
        return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err * err).mean())), "onnx_max_gap": gap}


__all__ = ["ML_OPSET", "SklearnTrainer", "VARIABLE", "available", "convert"]


#: where ``sklearn:<EstimatorName>`` is looked up (the estimators skl2onnx converts for tabular data)
ESTIMATOR_MODULES = ("sklearn.ensemble", "sklearn.linear_model", "sklearn.tree", "sklearn.neighbors",
                     "sklearn.naive_bayes", "sklearn.neural_network", "sklearn.svm",
                     "sklearn.discriminant_analysis")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def estimator_by_name(name: str, options: dict | None = None):
    """An unfitted estimator ``name`` (e.g. ``HistGradientBoostingClassifier``) built with ``options``.

    Raises ``ValueError`` saying why when the extra is missing, the name is unknown or an option is not
    one of the estimator's parameters (the config layer turns it into an error naming file and key).
    """
    why = available()
    if why:
        raise ValueError(why)
    if not (isinstance(name, str) and 0 < len(name) <= 64 and name[0].isalpha() and set(name) <= _NAME_CHARS):
        raise ValueError(f"estimator name {_cut(name)}; expected a scikit-learn class name")
    from sklearn import (discriminant_analysis, ensemble, linear_model, naive_bayes, neighbors, neural_network, svm,
                         tree)
    from sklearn.base import BaseEstimator

    modules = (ensemble, linear_model, tree, neighbors, naive_bayes, neural_network, svm, discriminant_analysis)
    for module in modules:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseEstimator):
            break
    else:
        raise ValueError(f"estimator {_cut(name)} is not a scikit-learn estimator in {', '.join(ESTIMATOR_MODULES)}")
    options = dict(options or {})
    known = set(cls().get_params())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"options {_cut(unknown)} are not parameters of {name}; known: {_cut(sorted(known))}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}({_cut(options)}): {_cut(str(exc))}") from None
