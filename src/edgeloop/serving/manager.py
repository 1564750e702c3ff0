"""The model manager: which versions are served, their lifecycle, and request routing.

Routing reads one immutable snapshot (``dict`` name -> ``_Served``) that loads and unloads replace
as a whole, so requests never take a lock to find their version, and a version swap is atomic:
requests that started on the old version finish on it, new ones go to the new one.  Loads and
unloads of one model are serialised by that model's admin lock; different models load, unload
and drain independently (only the snapshot swap itself is shared, and it never waits on I/O).  A version is READY only after its session loaded and
answered a warm-up run; a failed load leaves whatever was serving untouched and records the reason.

A load may carry Triton's model configuration (JSON, see ``triton_config``).  Its settings override
the edge config's for that model *from then on*, in memory only: later loads without a config keep
them (until another config replaces them), unloading keeps them, a restart forgets them.  The
override is kept only once the load has published its versions; a load refused or rolled back
leaves the previous settings in force.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.errors import (ProtocolError, failed_precondition, invalid_argument, not_found, quote,
                                      unavailable)
from edgeloop.serving.batcher import merge_limit_warning
from edgeloop.serving.escalation import check_escalation
from edgeloop.serving.features import FeatureStates, build_front
from edgeloop.serving.metrics import ServingMetrics
from edgeloop.serving.model_version import ModelVersion
from edgeloop.serving.repository import (MANIFEST_FILE, MODEL_FILE, MODEL_NAME_EXPECTATION, ModelRepository,
                                         RepositoryError, atomic_write, check_manifest, parse_version,
                                         valid_model_name)
from edgeloop.serving.session import ExternalDataError, SessionError, create_session, refuse_external_data
from edgeloop.serving.signature import ModelSignature, SignatureError, check_declared
from edgeloop.serving.triton_config import PLATFORM, describe_triton_config, parse_triton_config

log = logging.getLogger("edgeloop.serving")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
#: How long an unload or a swap waits for in-flight requests of the old version.
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ModelEvent:
    """Told to listeners after every load or unload: what happened and what is now ready."""

    kind: str  # "load" | "unload"
    model: str
    ready_versions: tuple[int, ...]


class _Served:
    """The ready versions of one model (immutable once published)."""

    __slots__ = ("versions", "by_str", "default")

    def __init__(self, versions: dict[int, ModelVersion]) -> None:
        self.versions = dict(sorted(versions.items()))
        self.by_str = {mv.version_str: mv for mv in self.versions.values()}
        self.default = self.versions[max(self.versions)]


class LoadError(Exception):
    """A version could not be made READY; the message is the reason."""


class ModelManager:
    """Loads versions from a ModelRepository per the serving config and routes requests to them."""

    def __init__(self, repository: ModelRepository, serving_config, metrics: ServingMetrics | None = None) -> None:
        self.repository = repository
        self.config = serving_config
        self.metrics = metrics or ServingMetrics()
        self._served: dict[str, _Served] = {}
        self._states: dict[str, dict[int, tuple[str, str]]] = {}
        self._admin_locks: dict[str, threading.Lock] = {}  # model -> lock serialising its loads/unloads
        self._admin_locks_guard = threading.Lock()
        self._swap = threading.Lock()  # read-modify-write of the ``_served`` snapshot
        self._listeners: list = []
        self._overrides: dict = {}  # model -> ModelConfig set by a load's Triton config (in memory)
        #: real-time feature state of models whose manifest declares features (per model and definition)
        self.features = FeatureStates()

    # ------------------------------------------------------------------------------ routing
    def acquire(self, name: str, version: str) -> ModelVersion:
        """The version a request should run on, counted in (call ``leave()`` after)."""
        for _ in range(3):
            served = self._served.get(name)
            if served is None:
                raise self._not_serving(name)
            mv = served.default if not version else served.by_str.get(version)
            if mv is None:
                mv = self._resolve_version(name, version, served)
            if mv.try_enter():
                return mv
        raise unavailable(f"model {name!r} version {version or mv.version_str} is being unloaded; retry")

    def _not_serving(self, name: str) -> ProtocolError:
        """Why ``name`` has no ready version: not a valid name, not known, or known but not ready."""
        if not valid_model_name(name):
            return invalid_name(name)
        if name in self._states or self.repository.has_model(name):
            states = self._states.get(name, {})
            reasons = "; ".join(f"version {v}: {s}{' (' + r + ')' if r else ''}" for v, (s, r) in sorted(states.items()))
            return unavailable(f"model {name!r} is not ready{': ' + reasons if reasons else ''}")
        return not_found(f"model_name {name!r} is not a known model; expected one of "
                         f"{self._known_list()}")

    def _known_list(self, limit: int = 20) -> str:
        """The known models for a message: the first ``limit`` names, then how many more."""
        names = self.known_models()
        shown = ", ".join(map(repr, names[:limit])) or "(none)"
        return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"

    def _resolve_version(self, name: str, version: str, served: _Served) -> ModelVersion:
        number = parse_version(version)
        if number is None:
            raise invalid_argument(f"model_version {quote(version)} for model {name!r}; expected a positive "
                                   f"integer or empty for the latest ready version")
        mv = served.versions.get(number)
        if mv is not None:
            return mv
        state = self._states.get(name, {}).get(number)
        if state is not None:
            return_reason = f" ({state[1]})" if state[1] else ""
            raise unavailable(f"model {name!r} version {number} is {state[0]}{return_reason}; ready versions: "
                              f"{list(served.versions)}")
        raise not_found(f"model_version {quote(version)} of model {name!r} does not exist; ready versions: "
                        f"{list(served.versions)}")

    def known_models(self) -> list[str]:
        return sorted(set(self.repository.model_names()) | set(self._states) | set(self._served))

    def ready_models(self) -> dict[str, list[int]]:
        """``{model: [ready versions ascending]}`` — what the mesh advertises."""
        return {name: list(s.versions) for name, s in sorted(self._served.items())}

    def is_ready(self, name: str, version: str = "") -> bool:
        served = self._served.get(name)
        if served is None:
            return False
        if not version:
            return True
        number = parse_version(version)
        return number is not None and number in served.versions

    def any_ready(self) -> bool:
        return bool(self._served)

    def queue_depth(self, model: str | None = None) -> int:
        """Requests waiting or running, for one model or all (the mesh's spill signal)."""
        served = self._served
        if model is not None:
            s = served.get(model)
            return sum(mv.inflight for mv in s.versions.values()) if s else 0
        return sum(mv.inflight for s in served.values() for mv in s.versions.values())

    def add_listener(self, fn) -> None:
        """``fn(event: ModelEvent)`` runs after every load and unload (errors are logged, not raised)."""
        self._listeners.append(fn)

    def _notify(self, kind: str, name: str) -> None:
        served = self._served.get(name)
        event = ModelEvent(kind, name, tuple(served.versions) if served else ())
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:
                log.exception("model listener %r failed on %s", fn, event)

    # ----------------------------------------------------------------------------- metadata
    def metadata(self, name: str, version: str):
        served, mv = self._peek_served(name, version)  # one snapshot: an unload in between cannot tear it

        def tensors(specs):
            return [inference_pb2.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype,
                                                                       shape=s.shape) for s in specs]

        return inference_pb2.ModelMetadataResponse(
            name=name, versions=[str(v) for v in served.versions], platform=PLATFORM,
            inputs=tensors(mv.client_signature.inputs), outputs=tensors(mv.signature.outputs))

    def triton_config(self, name: str, version: str):
        """Triton's ModelConfig of ``name`` as served by ``version`` (empty: the latest ready one)."""
        mv = self._peek(name, version)
        return describe_triton_config(name, mv.config, mv.client_signature)

    def _peek(self, name: str, version: str) -> ModelVersion:
        return self._peek_served(name, version)[1]

    def _peek_served(self, name: str, version: str) -> tuple[_Served, ModelVersion]:
        """The model's ready versions and the one ``version`` names, from one snapshot (no counting in)."""
        served = self._served.get(name)
        if served is None:
            raise self._not_serving(name)
        if not version:
            return served, served.default
        return served, served.by_str.get(version) or self._resolve_version(name, version, served)

    def statistics(self, name: str = "", version: str = "") -> list:
        """ModelStatistics of ready versions (all models when ``name`` is empty)."""
        if not name:
            return [mv.stats.snapshot() for s in self._served.values() for mv in s.versions.values()]
        if version:
            return [self._peek(name, version).stats.snapshot()]
        served = self._served.get(name)
        if served is None:
            raise self._not_serving(name)
        return [mv.stats.snapshot() for mv in served.versions.values()]

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model in the repository or ever loaded."""
        rows = []
        for name in self.known_models():
            states = self._states.get(name)
            if not states:
                if not ready_only:
                    rows.append((name, "", "", ""))
                continue
            for version, (state, reason) in sorted(states.items()):
                if not ready_only or state == READY:
                    rows.append((name, str(version), state, reason))
        return rows

    # ---------------------------------------------------------------------------- lifecycle
    def load_all(self) -> dict[str, str]:
        """Load every model in the repository; returns ``{model: error}`` for those that failed."""
        failed = {}
        for name in self.repository.model_names():
            try:
                self.load(name)
            except ProtocolError as exc:
                failed[name] = exc.message
        return failed

    def model_config(self, name: str):
        """The settings ``name`` loads with: a load's Triton config override, else the edge config's."""
        override = self._overrides.get(name)
        return override if override is not None else self.config.model(name)

    def _require_in_repository(self, name: str) -> None:
        if not valid_model_name(name):
            raise invalid_name(name)
        if not self.repository.has_model(name):
            names = self.repository.model_names()
            shown = ", ".join(map(repr, names[:20])) or "(none)"
            raise not_found(f"model_name {name!r} is not in the model repository {self.repository.root}; "
                            f"expected one of {shown}{f' and {len(names) - 20} more' if len(names) > 20 else ''}")

    def _admin(self, name: str) -> threading.Lock:
        """The lock serialising loads and unloads of ``name`` (a slow load never holds up another model)."""
        with self._admin_locks_guard:
            return self._admin_locks.setdefault(name, threading.Lock())

    def _replace_served(self, name: str, served: "_Served | None") -> None:
        """Publish a new snapshot in which ``name`` maps to ``served`` (or is gone when None)."""
        with self._swap:
            snapshot = dict(self._served)
            if served is None:
                snapshot.pop(name, None)
            else:
                snapshot[name] = served
            self._served = snapshot

    def load(self, name: str, files: dict[str, bytes] | None = None, triton_config: str | None = None) -> None:
        """(Re)load ``name`` per its version policy, after writing ``files`` (``"<v>/model.onnx"`` -> bytes).

        ``triton_config`` (Triton's model configuration as JSON) overrides the model's settings from
        now on; with no files it reloads the repository's versions with the new settings.
        Raises ProtocolError: NOT_FOUND (no such model), INVALID_ARGUMENT (bad file parameter or
        config), FAILED_PRECONDITION (a version failed to load; what was serving still serves).
        """
        if not valid_model_name(name):  # before anything: a name is a directory and a log field
            raise invalid_name(name)
        if not files:  # refused before a lock exists for it: unknown names must not grow ``_admin_locks``
            self._require_in_repository(name)
        with self._admin(name):
            override = None
            if triton_config is not None:
                override = parse_triton_config(triton_config, self.config.model(name))
            backups = self._write_files(name, files) if files else {}
            try:
                self._load_locked(name, override)
            except ProtocolError:
                self._undo_failed_push(name, backups)
                raise
            for _path, backup in backups.items():
                self.repository.drop_previous(backup)

    def _undo_failed_push(self, name: str, backups: dict) -> None:
        """Put back the files a failed load overwrote, unless the new file is what now serves.

        A pushed file that could not be made READY must not replace a good one on disk: the old
        version still serves from memory, and a restart must find it again.
        """
        served = self._served.get(name)
        serving_new_file = {}
        for version in {parse_version(path.parent.name) for path in backups}:
            mv = served.versions.get(version) if served else None
            try:
                serving_new_file[version] = (mv is not None
                                             and mv.fingerprint == self.repository.fingerprint(name, version))
            except OSError:
                serving_new_file[version] = False
        for path, backup in backups.items():
            if serving_new_file[parse_version(path.parent.name)]:
                self.repository.drop_previous(backup)
                continue
            try:
                self.repository.restore_previous(path, backup)
                log.info("model %s: restored %s after the failed load", name, path)
            except OSError as exc:
                log.error("model %s: cannot restore %s after the failed load: %s", name, path, exc)

    def _load_locked(self, name: str, override) -> None:
        """The body of ``load`` once pushed files are on disk (the admin lock is held)."""
        self._require_in_repository(name)
        config = override if override is not None else self.model_config(name)
        on_disk = self.repository.versions(name)
        wanted = config.version_policy.select(on_disk)
        if not wanted:
            raise failed_precondition(f"model {name!r}: no version on disk {on_disk} matches the version "
                                      f"policy {config.version_policy}")
        current = dict(self._served[name].versions) if name in self._served else {}
        states = self._states.setdefault(name, {})
        chosen: dict[int, ModelVersion] = {}
        failures: list[str] = []
        failed_reasons: dict[int, str] = {}
        for version in wanted:
            old = current.get(version)
            try:
                fingerprint = self.repository.fingerprint(name, version)
            except OSError as exc:
                failures.append(f"version {version}: {exc}")
                states[version] = (UNAVAILABLE, str(exc))
                continue
            if old is not None and old.fingerprint == fingerprint and old.config == config:
                chosen[version] = old
                continue
            states[version] = (LOADING, "")
            try:
                chosen[version] = self._load_version(name, version, config, fingerprint)
            except LoadError as exc:
                reason = str(exc)
                log.warning("model %s version %d failed to load: %s", name, version, reason)
                failures.append(f"version {version}: {reason}")
                failed_reasons[version] = reason
                states[version] = (UNAVAILABLE, reason)
        if failures and current:  # nothing is published: the new versions were never exported
            for version in current:
                reason = failed_reasons.get(version)
                states[version] = (READY, f"previous file still serving; the new file failed: {reason}"
                                   if reason else "")
            raise failed_precondition(f"model {name!r} failed to load ({'; '.join(failures)}); still serving "
                                      f"versions {sorted(current)}")
        if override is not None:
            self._overrides[name] = override
            log.info("model %s: settings from the load's config (in memory): max_batch_size=%d "
                     "max_queue_delay_us=%d preferred_batch_sizes=%s version_policy=%s", name,
                     override.max_batch_size, override.max_queue_delay_us,
                     list(override.preferred_batch_sizes), override.version_policy)
        self._publish(name, chosen, current, states)
        if failures:
            raise failed_precondition(f"model {name!r} failed to load ({'; '.join(failures)})"
                                      + (f"; serving versions {sorted(chosen)}" if chosen else ""))

    def _publish(self, name: str, chosen: dict, current: dict, states: dict) -> None:
        self._replace_served(name, _Served(chosen) if chosen else None)
        for version in chosen:
            states[version] = (READY, "")
        for version, mv in current.items():
            if chosen.get(version) is mv:
                continue
            if version not in chosen:
                states[version] = (UNLOADING, "")
            if not mv.retire(DRAIN_TIMEOUT_S):
                log.warning("model %s version %d: in-flight requests still running after %.0f s", name, version,
                            DRAIN_TIMEOUT_S)
            if version not in chosen:
                states[version] = (UNAVAILABLE, "unloaded: not selected by the version policy")
                log.info("unloaded model %s version %d (version policy)", name, version)
        for version, mv in chosen.items():
            mv.metrics.serve(mv.stats)
        self._notify("load", name)

    def _load_version(self, name: str, version: int, config, fingerprint) -> ModelVersion:
        what = f"model {name!r} version {version}"
        start = time.perf_counter()
        try:
            data, manifest = self.repository.read_model(name, version)
            session = create_session(data, config, what)
            signature = ModelSignature.from_session(session, config.max_batch_size)
            check_declared(signature, manifest)
            check_escalation(config.escalation, signature)
            front = build_front(name, manifest, signature, config, self.features)
        except (RepositoryError, SessionError, SignatureError) as exc:
            raise LoadError(str(exc)) from None
        mv = ModelVersion(name, version, session, signature, config, fingerprint,
                          self.metrics.for_version(name, str(version)), features=front)
        too_big = merge_limit_warning(config.max_batch_size, self.config.grpc_workers) if config.batching else None
        if too_big:
            log.warning("%s: %s", what, too_big)
        try:
            mv.warm_up()
        except Exception as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LoadError(f"warm-up request failed: {text}") from None
        elapsed_ms = (time.perf_counter() - start) * 1000
        fmt = lambda specs: ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in specs)  # noqa: E731
        log.info("loaded model %s version %d inputs [%s] outputs [%s] in %.1f ms%s", name, version,
                 fmt(signature.inputs), fmt(signature.outputs), elapsed_ms,
                 f" (max_batch_size={config.max_batch_size})" if config.max_batch_size else "")
        return mv

    def _write_files(self, name: str, files: dict[str, bytes]) -> dict:
        """Write pushed files atomically; returns ``{path: backup of the previous file or None}``."""
        repository = self.repository
        try:
            targets = {relative: repository.version_file_path(name, relative) for relative in sorted(files)}
        except RepositoryError as exc:
            raise invalid_argument(f"parameters: {exc}") from None
        written_models = {version for rel, (version, _p) in targets.items() if rel.endswith(MODEL_FILE)}
        manifests = {version for rel, (version, _p) in targets.items() if rel.endswith(MANIFEST_FILE)}
        _check_pushed_files(name, files, written_models, manifests)
        backups: dict = {}

        def write(relative: str, data: bytes) -> None:
            version, path = repository.version_file_path(name, relative)
            if path not in backups:
                backups[path] = repository.keep_previous(path)
            atomic_write(path, data)

        try:
            for relative, data in sorted(files.items()):
                write(relative, data)
                if relative.endswith(MODEL_FILE):
                    log.info("wrote model %s version %d from a load request (%d bytes)", name,
                             targets[relative][0], len(data))
            for version in sorted(written_models - manifests):
                # a pushed model file supersedes any manifest left beside an older file
                data = files[f"{version}/{MODEL_FILE}"]
                meta = {"name": name, "version": version, "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data)}
                write(f"{version}/{MANIFEST_FILE}", json.dumps(meta, indent=2, sort_keys=True).encode())
        except OSError as exc:
            self._undo_failed_push(name, backups)
            raise failed_precondition(f"model {name!r}: cannot write the pushed files to the repository "
                                      f"{repository.root}: {exc}") from None
        return backups

    def unload(self, name: str, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop serving ``name``: refuse new requests, wait for in-flight ones, release sessions."""
        if not valid_model_name(name):
            raise invalid_name(name)
        if name not in self._served and name not in self._states and not self.repository.has_model(name):
            raise not_found(f"model_name {name!r} is not a known model; expected one of {self._known_list()}")
        with self._admin(name):  # only known names get a lock
            served = self._served.get(name)
            if served is None:
                return  # already unloaded: nothing to do, as Triton
            self._replace_served(name, None)
            states = self._states.setdefault(name, {})
            for version, mv in served.versions.items():
                states[version] = (UNLOADING, "")
            for version, mv in served.versions.items():
                mv.retire(drain_timeout_s)
                states[version] = (UNAVAILABLE, "unloaded")
                log.info("unloaded model %s version %d", name, version)
            self._notify("unload", name)

    def close(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Unload everything (used at shutdown, after the server stopped taking requests)."""
        for name in list(self._served):
            self.unload(name, drain_timeout_s)


def _check_pushed_files(name: str, files: dict[str, bytes], models: set[int], manifests: set[int]) -> None:
    """Refuse a push before anything is written: a manifest without the model file it describes or
    that does not match it, and a model whose tensors reference external files (INVALID_ARGUMENT).

    Bytes that are not an ONNX model at all are left to the load, which fails them like any broken file.
    """
    for version in sorted(manifests):
        key = f"parameters['file:{version}/{MANIFEST_FILE}']"
        if version not in models:
            raise invalid_argument(f"{key} comes without 'file:{version}/{MODEL_FILE}'; expected a manifest only "
                                   f"together with the model file it describes")
        try:
            check_manifest(files[f"{version}/{MANIFEST_FILE}"], files[f"{version}/{MODEL_FILE}"], key)
        except RepositoryError as exc:
            raise invalid_argument(str(exc)) from None
    for version in sorted(models):
        try:
            refuse_external_data(files[f"{version}/{MODEL_FILE}"],
                                 f"parameters['file:{version}/{MODEL_FILE}'] (model {name!r} version {version})")
        except ExternalDataError as exc:
            raise invalid_argument(str(exc)) from None
        except SessionError:
            continue  # not ONNX: the load reports it (FAILED_PRECONDITION, the serving version untouched)


def invalid_name(name: str) -> ProtocolError:
    """INVALID_ARGUMENT for a model name outside the documented character set (see ``repository``)."""
    return invalid_argument(f"model_name {quote(name)} is not a valid model name; expected {MODEL_NAME_EXPECTATION}")


__all__ = ["DRAIN_TIMEOUT_S", "LoadError", "ModelEvent", "ModelManager", "PLATFORM", "READY", "UNAVAILABLE"]
