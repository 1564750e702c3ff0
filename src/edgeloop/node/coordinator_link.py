"""The edge's control link to the coordinator: Join, periodic status reports, and the directive stream.

The edge opens every connection.  One thread joins (at start and after every broken stream, with
jittered exponential backoff), then consumes ``Directives`` from the last applied sequence, which
is persisted in the outbox database, so a restarted or reconnected edge neither skips nor repeats a
directive.  Each directive is applied, its sequence persisted, then its result reported with
``ReportDirective`` (a report that could not be sent is sent again after the next Join).  A second
thread sends ``ReportStatus`` every heartbeat interval (and at once on ``ReportNow``).

Loads fetch the artifact with ``FetchArtifact`` in chunks into ``<outbox dir>/downloads/<sha>.part``;
a broken fetch resumes from the bytes already on disk; the whole file's sha256 and size are checked
before it is loaded through ``ModelManager.load`` (the path ``RepositoryModelLoad`` takes).  A
coordinator that goes away in the middle of a directive leaves it unapplied: it is delivered again
after reconnecting and the fetch resumes.  Serving never waits on any of this.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time

import grpc

from edgeloop.node.uploader import Backoff
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.errors import ProtocolError
from edgeloop.serving.repository import parse_version, valid_model_name
from edgeloop.serving.stats import LATENCY_BOUNDS_NS

log = logging.getLogger("edgeloop.node.coordinator")

LAST_APPLIED_KEY = "directive.last_applied"
PIN_KEY = "rollback.pin."  # + model: the version a rollback pinned (re-applied after a restart)
PENDING_RESULT_KEY = "directive.pending_result"
DATABASE_ID_KEY = "coordinator.database_id"  # the coordinator database the cursor above counts in
_DATABASE_ID = re.compile(r"^[0-9A-Za-z_.:-]{1,128}$")
MAX_ARTIFACT_BYTES = 2 << 30
MAX_MANIFEST_BYTES = 1 << 20
CALL_TIMEOUT_S = 10.0
FETCH_TIMEOUT_S = 300.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: what gRPC says when a message from the coordinator passes this channel's receive limit
_TOO_LARGE = "Received message larger than max"
#: gRPC codes after which a directive is retried (the coordinator is away), not reported failed.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAUTHENTICATED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


class DirectiveFailed(Exception):
    """A directive that cannot be applied; the message is the reason reported to the coordinator."""


class CoordinatorReplyError(Exception):
    """The coordinator answered something this edge cannot use; the link retries later, like an outage."""


def percentile_ms(buckets, q: float) -> float:
    """The latency below which ``q`` of the requests fell, from per-bucket counts (bucket upper bound, ms)."""
    total = sum(buckets)
    if not total:
        return 0.0
    target, running = q * total, 0
    for i, n in enumerate(buckets):
        running += n
        if running >= target:
            return LATENCY_BOUNDS_NS[i] / 1e6 if i < len(LATENCY_BOUNDS_NS) else LATENCY_BOUNDS_NS[-1] / 1e6
    return LATENCY_BOUNDS_NS[-1] / 1e6


def _u(value, bits: int = 64) -> int:
    """``value`` as an unsigned protobuf field takes it: clamped to 0..2**bits-1 (a counter computed as a
    difference can dip below zero for a moment; protobuf raises ValueError on it, which lost the report)."""
    return min(max(int(value), 0), (1 << bits) - 1)


def _policy_json(policy) -> dict:
    if policy.kind == "all":
        return {"all": {}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"latest": {"num_versions": policy.latest_n}}


class CoordinatorLink:
    """Joins the coordinator as ``node`` (an EdgeNode) and carries out its directives."""

    def __init__(self, node, channel, backoff_max_s: float = 10.0) -> None:
        self.node = node
        self.node_id = node.config.node.id
        self.stub = mesh_pb2_grpc.CoordinatorStub(channel)
        self.outbox = node.outbox
        self.downloads = self.outbox.path.parent / f"downloads-{self.node_id}"
        from edgeloop.node.updater import Updater

        self.updater = Updater(node, self.outbox, self.downloads, self.stub)
        self.backoff = Backoff(0.1, backoff_max_s)
        self.fleet_epoch = 0
        self.interval_s = 1.0
        self.joined = threading.Event()
        self.connected = False
        self.applied: list[tuple[int, bool, str]] = []  # (sequence, ok, error) applied since start
        self.reports_sent = 0
        self.reports_failed = 0
        self.database_resets = 0  # times the coordinator answered from another database (cursor reset)
        self._report_error: str | None = None  # the last failure logged (one line per kind, not per interval)
        self._report_now = threading.Event()
        self._stop = threading.Event()
        self._stream = None
        self._threads: list[threading.Thread] = []
        last = self.outbox.get_meta(LAST_APPLIED_KEY, "0")
        self.last_applied = int(last) if last and last.isdigit() else 0

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> "CoordinatorLink":
        for target, name in ((self._run_directives, "edgeloop-directives"), (self._run_reports, "edgeloop-status")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._report_now.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for thread in self._threads:
            thread.join(timeout_s)

    def report_now(self) -> None:
        self._report_now.set()


    # ---------------------------------------------------------------------------- join + directives
    def _identity(self) -> mesh_pb2.NodeIdentity:
        cfg = self.node.config
        return mesh_pb2.NodeIdentity(node_id=self.node_id, host=cfg.node.host, grpc_port=self.node.grpc_port,
                                     metrics_port=self.node.metrics_port or 0, weight=cfg.node.weight,
                                     zone=cfg.node.zone, protocol_version="1")

    def join(self) -> None:
        response = self.stub.Join(mesh_pb2.JoinRequest(node=self._identity(), models=self.model_versions()),
                                  timeout=CALL_TIMEOUT_S)
        self._check_database(response.database_id)
        self.fleet_epoch = response.fleet_epoch
        if getattr(self.node, "federated", None) is not None:
            self.node.federated.set_models(response.federated_models)  # their raw rows stay on this edge
        if response.heartbeat_interval_ms:
            self.interval_s = min(60.0, max(0.05, response.heartbeat_interval_ms / 1000))
        self.joined.set()
        pending = self.outbox.get_meta(PENDING_RESULT_KEY)
        if pending:  # a result the coordinator never got: send it before anything else
            try:
                seq, ok, error = json.loads(pending)
                seq = int(seq)
            except (ValueError, TypeError):
                log.error("the pending directive result %r is unreadable; dropped", pending[:200])
                self.outbox.set_meta(PENDING_RESULT_KEY, "")
            else:
                self._send_result(seq, bool(ok), str(error))

    def _check_database(self, database_id: str) -> None:
        """Directive sequences count within one coordinator database: when the coordinator answers from
        another one (a reset: sequences restart at 1), the cursor and any unsent result of the old one go."""
        if not database_id:
            return  # a coordinator that predates database ids: nothing to compare
        if not _DATABASE_ID.match(database_id):
            raise CoordinatorReplyError(f"JoinResponse.database_id {database_id[:200]!r}; expected 1..128 "
                                        f"letters, digits, '_', '.', ':' or '-'")
        known = self.outbox.get_meta(DATABASE_ID_KEY, "")
        if known == database_id:
            return
        if known:
            log.warning("coordinator database changed (%s -> %s): directive cursor %d reset to 0, the new "
                        "database's directives are applied from its first", known, database_id, self.last_applied)
            self.outbox.set_meta_many({DATABASE_ID_KEY: database_id, LAST_APPLIED_KEY: "0", PENDING_RESULT_KEY: ""})
            self.last_applied = 0
            self.database_resets += 1
        else:  # the first Join that names a database: this cursor counts in it
            self.outbox.set_meta(DATABASE_ID_KEY, database_id)

    def _run_directives(self) -> None:
        while not self._stop.is_set():
            try:
                self.join()
                if self.backoff.failures:
                    log.info("coordinator %s reachable again (joined, epoch %d)", self.node.config.coordinator_address,
                             self.fleet_epoch)
                self.backoff.reset()
                self._consume()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                self._wait_backoff(f"{exc.code().name}: {(exc.details() or '')[:200]}")
            except CoordinatorReplyError as exc:
                if self._stop.is_set():
                    return
                self._wait_backoff(str(exc))
            except Exception as exc:  # the link must outlive anything; serving goes on regardless
                if self._stop.is_set():
                    return
                log.exception("coordinator link: unexpected error")
                self._wait_backoff(f"{type(exc).__name__}: {exc}")
            finally:
                self.connected = False

    def _wait_backoff(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        if self.backoff.failures == 1:
            log.warning("coordinator %s: %s; retrying (backoff up to %.1f s); serving goes on",
                        self.node.config.coordinator_address, reason, self.backoff.max_s)
        self._stop.wait(delay)

    def _consume(self) -> None:
        stream = self.stub.Directives(mesh_pb2.DirectivesRequest(node_id=self.node_id,
                                                                 after_sequence=self.last_applied))
        self._stream = stream
        self.connected = True
        try:
            for directive in stream:
                if self._stop.is_set():
                    return
                if directive.sequence <= self.last_applied:
                    continue  # already applied (a re-delivery)
                self._apply_and_report(directive)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in (exc.details() or ""):
                self._skip_oversized(exc.details())
            raise
        finally:
            self._stream = None

    def _skip_oversized(self, details: str) -> None:
        """The next directive is larger than this edge accepts: it would end every stream the same way, so
        it is reported failed and passed over (sequences are consecutive per edge: it is the cursor's next)."""
        seq = self.last_applied + 1
        error = f"directive {seq} is larger than this edge receives ({details[:200]}); not applied"
        try:
            self.stub.ReportDirective(mesh_pb2.DirectiveResult(node_id=self.node_id, sequence=seq, ok=False,
                                                               error=error), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:  # not that sequence after all, or the coordinator is away: try again later
            log.warning("directive %d is too large and could not be reported failed (%s); retrying", seq,
                        exc.code().name)
            return
        log.error("%s", error)
        self.outbox.set_meta_many({LAST_APPLIED_KEY: str(seq), PENDING_RESULT_KEY: ""})
        self.last_applied = seq
        self.applied.append((seq, False, error))

    def _apply_and_report(self, directive) -> None:
        seq = directive.sequence
        try:
            self.apply(directive)
            ok, error = True, ""
        except DirectiveFailed as exc:
            ok, error = False, str(exc)[:1000]
        except grpc.RpcError as exc:
            if exc.code() in _TRANSIENT:
                raise  # the coordinator is away: applied again after reconnecting
            # a refusal (INVALID_ARGUMENT, NOT_FOUND, ...) comes back the same every time: retrying it would
            # hold every later directive back forever, so it is this directive's failure
            ok, error = False, f"the coordinator refused a call: {exc.code().name}: {(exc.details() or '')[:500]}"
        except Exception as exc:  # a bug or a reply nobody foresaw: fail this directive, not the stream
            log.exception("directive %d (%s): unexpected error", seq, directive.WhichOneof("action"))
            ok, error = False, f"unexpected error: {type(exc).__name__}: {str(exc)[:500]}"
        log.info("directive %d (%s): %s", seq, directive.WhichOneof("action"), "applied" if ok else f"failed: {error}")
        # the sequence and the result still to report, in one transaction
        self.outbox.set_meta_many({LAST_APPLIED_KEY: str(seq), PENDING_RESULT_KEY: json.dumps([seq, ok, error])})
        self.last_applied = seq
        self.applied.append((seq, ok, error))
        self._send_result(seq, ok, error)

    def _send_result(self, seq: int, ok: bool, error: str) -> None:
        try:
            self.stub.ReportDirective(mesh_pb2.DirectiveResult(node_id=self.node_id, sequence=seq, ok=ok,
                                                               error=error), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() in _TRANSIENT:
                raise  # kept pending: sent again after the next Join
            log.warning("directive %d: the coordinator refused its result (%s: %s); not sent again", seq,
                        exc.code().name, (exc.details() or "")[:200])
        self.outbox.set_meta(PENDING_RESULT_KEY, "")

    # ---------------------------------------------------------------------------- applying
    def apply(self, directive) -> None:
        """Carry out one directive; DirectiveFailed (reported) or grpc.RpcError (retried after reconnect)."""
        action = directive.WhichOneof("action")
        if action == "load":
            self._load(directive.load)
        elif action == "unload":
            self._unload(directive.unload)
        elif action == "rollback":
            self._rollback(directive.rollback)
        elif action == "report":
            self.report_now()
        elif action == "federated":
            self._federated(directive.federated)
        else:
            raise DirectiveFailed(f"directive {directive.sequence} has no action this edge knows (a newer "
                                  f"coordinator?); expected load, unload, rollback, report or federated")

    def _federated(self, round_msg) -> None:
        from edgeloop.node.federated import RoundFailed

        self._check_model(round_msg.model, 1)
        if getattr(self.node, "federated", None) is None:
            raise DirectiveFailed("federated round: this edge has no data path for federated training")
        try:
            self.node.federated.run_round(round_msg)
        except RoundFailed as exc:
            raise DirectiveFailed(f"federated round {round_msg.round_id[:80]!r}: {exc}") from None

    @staticmethod
    def _check_model(model: str, version: int, allow_zero: bool = False) -> None:
        if not valid_model_name(model):
            raise DirectiveFailed(f"model {model[:200]!r} is not a model name; expected letters, digits, '_', '-', '.'")
        if not (allow_zero and version == 0) and parse_version(str(version)) is None:
            raise DirectiveFailed(f"version {version} of model {model!r}; expected a positive integer")

    def _load(self, load) -> None:
        self._check_model(load.model, load.version)
        sha = load.artifact_sha256.lower()
        if not _SHA256.match(sha):
            raise DirectiveFailed(f"artifact_sha256 {load.artifact_sha256[:200]!r}; expected 64 hex characters")
        if not 0 < load.size <= MAX_ARTIFACT_BYTES:
            raise DirectiveFailed(f"size {load.size} of model {load.model!r}; expected 1..{MAX_ARTIFACT_BYTES} bytes")
        if len(load.manifest_json) > MAX_MANIFEST_BYTES:
            raise DirectiveFailed(f"manifest_json has {len(load.manifest_json)} bytes; expected at most "
                                  f"{MAX_MANIFEST_BYTES}")
        models = self.node.models
        if load.version in models.ready_models().get(load.model, []) and self._served_sha(load.model,
                                                                                            load.version) == sha:
            return  # already serving exactly this artifact
        from edgeloop.delivery.manifest import ManifestError
        from edgeloop.delivery.transfer import TransferError

        try:
            doc = self.updater.admit(load, sha)
        except ManifestError as exc:
            raise DirectiveFailed(f"refused: {exc}") from None
        config = None
        wanted = self.node.config.serving.model(load.model).version_policy
        if models.model_config(load.model).version_policy != wanted:  # undo an earlier rollback's pin
            config = json.dumps({"version_policy": _policy_json(wanted)})
        if wanted.kind == "latest" and wanted.latest_n == 1:  # keep the previous version loaded for rollback
            config = json.dumps({"version_policy": {"latest": {"num_versions": 2}}})
        if doc is None or "chunks" not in doc:  # development: an unsigned push without chunk hashes
            data = self.fetch(sha, load.size)
            doc = doc or {"model": load.model, "version": load.version, "sha256": sha, "size": load.size}
        else:
            self.downloads.mkdir(parents=True, exist_ok=True)
            try:
                data = self.updater.fetch(doc, load)
            except TransferError as exc:
                raise DirectiveFailed(f"transfer of model {load.model!r} version {load.version} failed: {exc}") \
                    from None
        from edgeloop.delivery.activation import ActivationError

        try:
            self.updater.activate(load, doc, data, config)
        except ActivationError as exc:
            raise DirectiveFailed(f"model {load.model!r} version {load.version} not activated: {exc}") from None
        except ProtocolError as exc:
            raise DirectiveFailed(f"load of model {load.model!r} version {load.version} failed: "
                                  f"{exc.message}") from None
        self.outbox.set_meta(PIN_KEY + load.model, "")  # a new version ends an earlier rollback
        if load.version not in models.ready_models().get(load.model, []):
            raise DirectiveFailed(f"model {load.model!r} version {load.version} was stored but is not served: the "
                                  f"version policy {wanted} does not select it")

    def _served_sha(self, model: str, version: int) -> str | None:
        from edgeloop.node.edge_stats import read_manifest

        manifest = read_manifest(self.node.models.repository, model, version)
        return manifest.get("sha256") if manifest else None

    def _unload(self, unload) -> None:
        self._check_model(unload.model, unload.version, allow_zero=True)
        models = self.node.models
        served = models.ready_models().get(unload.model, [])
        if unload.version and served and served != [unload.version]:
            if unload.version not in served:
                return  # that version is not served: nothing to do
            raise DirectiveFailed(f"unload of model {unload.model!r} version {unload.version}: versions {served} "
                                  f"are served; expected version 0 (every version) or the only served version")
        try:
            models.unload(unload.model)
        except ProtocolError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise DirectiveFailed(f"unload of model {unload.model!r} failed: {exc.message}") from None

    def _rollback(self, rollback) -> None:
        self._check_model(rollback.model, rollback.to_version)
        from edgeloop.delivery.manifest import ManifestError

        try:
            self.updater.admit_rollback(rollback)
        except ManifestError as exc:
            raise DirectiveFailed(f"refused: {exc}") from None
        self._pin(rollback.model, rollback.to_version)
        self.outbox.set_meta(PIN_KEY + rollback.model, str(rollback.to_version))

    def _pin(self, model: str, version: int) -> None:
        pin(self.node.models, model, version)

    def fetch(self, sha: str, size: int) -> bytes:
        """The artifact ``sha`` (``size`` bytes), resuming a partial download; its sha256 checked."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        part = self.downloads / f"{sha}.part"
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        if offset < size:
            with open(part, "ab") as fh:
                request = mesh_pb2.FetchArtifactRequest(sha256=sha, offset=offset, chunk_size=0)  # server's chunk
                try:
                    for chunk in self.stub.FetchArtifact(request, timeout=FETCH_TIMEOUT_S):
                        if chunk.offset != offset or (chunk.total_size and chunk.total_size != size) \
                                or offset + len(chunk.data) > size:
                            raise DirectiveFailed(f"artifact {sha}: chunk at offset {chunk.offset} ({len(chunk.data)} "
                                                  f"bytes, total {chunk.total_size}); expected offset {offset} of "
                                                  f"{size} bytes")
                        fh.write(chunk.data)
                        offset += len(chunk.data)
                except grpc.RpcError as exc:
                    fh.flush()
                    if exc.code() in _TRANSIENT:
                        raise  # keep the part file: the fetch resumes from here after reconnecting
                    raise DirectiveFailed(f"artifact {sha}: FetchArtifact failed: {exc.code().name}: "
                                          f"{(exc.details() or '')[:200]}") from None
                fh.flush()
                os.fsync(fh.fileno())
        data = part.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            part.unlink()
            raise DirectiveFailed(f"artifact {sha}: received {len(data)} bytes with sha256 "
                                  f"{hashlib.sha256(data).hexdigest()}; expected {size} bytes with sha256 {sha}")
        part.unlink()
        return data

    # ---------------------------------------------------------------------------- status
    def model_versions(self) -> list[mesh_pb2.ModelVersion]:
        out = []
        for name, version, state, _reason in self.node.models.index():
            if version:
                out.append(mesh_pb2.ModelVersion(model=name, version=int(version), state=state,
                                                 sha256=self._served_sha(name, int(version)) or ""))
        return out

    def status_report(self):
        """The StatusReport now, and the commit function of its feature statistics."""
        node = self.node
        feature_stats, commit = [], lambda: None
        if node.edge_stats is not None:
            try:
                feature_stats, commit = node.edge_stats.report()
            except Exception as exc:  # the rest of the report still goes out; the statistics keep accumulating
                self._report_failed(exc, "its feature statistics were left out")
        snap = self.outbox.snapshot()
        dropped_by_model: dict[str, int] = {}
        for (model, _reason), n in snap["dropped"].items():
            dropped_by_model[model] = dropped_by_model.get(model, 0) + n
        serving = []
        for (model, version), totals, _loaded in node.models.metrics.label_totals():
            serving.append(mesh_pb2.ModelServingStats(
                model=model, version=int(version) if version.isdigit() else 0, requests=_u(totals.success_count),
                failures=_u(totals.fail_count), latency_p50_ms=percentile_ms(totals.request_buckets, 0.5),
                latency_p99_ms=percentile_ms(totals.request_buckets, 0.99),
                samples_dropped=_u(dropped_by_model.get(model, 0)),
                samples_recorded=_u(snap["committed_by_model"].get(model, 0)),
                labels_recorded=_u(snap["labels_by_model"].get(model, 0))))
        report = mesh_pb2.StatusReport(
            node_id=self.node_id, epoch=_u(self.fleet_epoch), models=self.model_versions(),
            feature_stats=feature_stats, queue_depth=_u(node.models.queue_depth(), 32),
            outbox_pending=_u(snap["pending_rows"]), outbox_dropped=_u(sum(snap["dropped"].values())),
            serving=serving, last_directive_applied=_u(self.last_applied), timestamp_ms=_u(time.time_ns() // 1_000_000))
        return report, commit

    def _run_reports(self) -> None:
        while not self._stop.is_set():
            self._report_now.wait(self.interval_s)
            self._report_now.clear()
            if self._stop.is_set() or not self.joined.is_set():
                continue
            failed_before = self.reports_failed
            try:
                report, commit = self.status_report()
            except Exception as exc:  # never the end of the loop: the next interval builds a new report
                self._report_failed(exc, "not sent")
                continue
            try:
                ack = self.stub.ReportStatus(report, timeout=CALL_TIMEOUT_S)
                commit()
                self.reports_sent += 1
                if ack.fleet_epoch:
                    self.fleet_epoch = ack.fleet_epoch
            except grpc.RpcError:
                continue  # the directive thread logs the outage and re-joins; statistics keep accumulating
            except Exception as exc:
                self._report_failed(exc, "not sent")
                continue
            if self._report_error is not None and self.reports_failed == failed_before:
                log.info("status reports are whole again (%d failed or partial before: %s)", self.reports_failed,
                         self._report_error)
                self._report_error = None

    def _report_failed(self, exc: Exception, outcome: str) -> None:
        """Count a report that could not be built whole or sent; logged once per kind of error, not every
        interval (the traceback with the first)."""
        self.reports_failed += 1
        what = f"{type(exc).__name__}: {str(exc)[:200]}"
        if what != self._report_error:
            self._report_error = what
            log.error("status report failed (%s): %s; the next one is tried in %.1f s", what, outcome,
                      self.interval_s, exc_info=exc)


def restore_rollback_pins(models, outbox) -> None:
    """Re-apply rollbacks made before a restart, before the repository loads (the manager keeps a load's
    config in memory only, so without this a restarted edge would serve the newest version again)."""
    for model in models.known_models():
        pinned = outbox.get_meta(PIN_KEY + model, "")
        if pinned and pinned.isdigit():
            try:
                pin(models, model, int(pinned))
                log.info("model %s: rollback to version %s re-applied after the restart", model, pinned)
            except DirectiveFailed as exc:
                log.error("model %s: the rollback pin could not be re-applied: %s", model, exc)


def pin(models, model: str, version: int) -> None:
    """Serve only ``version`` of ``model`` (a load with a Triton ``version_policy``: the manager's path)."""
    on_disk = models.repository.versions(model)
    if version not in on_disk:
        raise DirectiveFailed(f"rollback of model {model!r} to version {version}: not on disk (versions on "
                              f"disk: {on_disk})")
    config = json.dumps({"version_policy": {"specific": {"versions": [version]}}})
    try:
        models.load(model, None, config)
    except ProtocolError as exc:
        raise DirectiveFailed(f"rollback of model {model!r} to version {version} failed: {exc.message}") from None


__all__ = ["CoordinatorLink", "CoordinatorReplyError", "DirectiveFailed", "percentile_ms", "pin",
           "restore_rollback_pins"]
