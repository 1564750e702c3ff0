"""The Fleet RPCs of the continuous-training loop: manual retrain, triggers, quarantine, registry views,
promotion and rollback.  Each reply carries a text for people and the same facts as JSON."""
from __future__ import annotations

import json

from edgeloop.ct import registry
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.errors import not_found

from . import validate as v

MAX_LIMIT = 1000
#: monitor rows in one status reply (the worst subject per model, monitor and slice)
MAX_MONITORS = 500
MAX_REASON_CHARS = 500


def _limit(request) -> int:
    if request.limit > MAX_LIMIT:
        raise v.bad("limit", request.limit, f"0 (default 100) .. {MAX_LIMIT}")
    return request.limit or 100


def _model(request, optional: bool = False) -> str | None:
    if optional and not request.model:
        return None
    return v.name("model", request.model)


def _reason(request, required: bool) -> str:
    if not request.reason and not required:
        return ""
    text = v.text("reason", request.reason, MAX_REASON_CHARS)
    if not text.strip() or not text.isprintable():
        raise v.bad("reason", request.reason, f"non-empty printable text of at most {MAX_REASON_CHARS} characters")
    return text


def _reply(text: str, doc) -> mesh_pb2.CtReply:
    return mesh_pb2.CtReply(text=text, json=json.dumps(doc, sort_keys=True, default=str))


def _published(core, model: str) -> list:
    versions = [p for p in core.store.published_models() if p.model == model]
    if not versions:
        raise not_found(f"model: {v.cut(model)} has no published version; expected a model pushed with "
                        f"`edgeloop models push`")
    return versions


class CtFleetMethods:
    """Mixed into FleetServicer (which supplies ``self.core`` and the ``guard`` decorator's needs)."""

    def _monitors(self) -> list:
        worst: dict[tuple, tuple] = {}
        for model, latest in sorted(self.core.ct.latest().items()):
            for (monitor, subject, slice_key), (value, threshold, alarm) in latest.items():
                ratio = value / threshold if threshold and threshold > 0 else 0.0
                key = (model, monitor, slice_key)
                if monitor == "accuracy":
                    ratio = 0.0
                if key not in worst or ratio > worst[key][0]:
                    worst[key] = (ratio, subject, value, threshold, alarm)
        return [mesh_pb2.CtMonitor(model=k[0], monitor=k[1], subject=w[1], slice=k[2], value=w[2], threshold=w[3],
                                   alarm=w[4]) for k, w in sorted(worst.items())[:MAX_MONITORS]]

    def _retrain(self, request):
        model = _model(request)
        reason = _reason(request, required=True)
        _published(self.core, model)
        federated = getattr(self.core, "federated", None)
        if federated is not None and model in federated.models:  # its raw rows stay on the edges: a round
            federated.triggers.request(model, reason)
            text = (f"retrain of {model} requested ({reason}); a federated round starts at the next step "
                    f"(`edgeloop triggers list`)")
            return _reply(text, {"model": model, "reason": reason, "requested": True, "federated": True})
        self.core.ct.request_retrain(model, reason)
        text = f"retrain of {model} requested ({reason}); the loop runs it on its next step (`edgeloop triggers list`)"
        return _reply(text, {"model": model, "reason": reason, "requested": True})

    def _triggers(self, request):
        rows = self.core.store.triggers(_model(request, optional=True), _limit(request))
        lines = [f"#{t['id']} {t['model']} {t['kind']} run {t['run_id']}: {t['evidence']}\n"
                 f"    -> {t['outcome'] or 'pending'}"
                 for t in rows]
        return _reply("\n".join(lines) or "no trigger has fired", rows)

    def _quarantine(self, request):
        rows = self.core.store.quarantine(_model(request, optional=True), _limit(request))
        lines = [f"{q['model']} run {q['run_id']} batch {q['batch_id']} from {q['node_id']} ({q['rows']} rows): "
                 + "; ".join(q["reasons"]) for q in rows]
        return _reply("\n".join(lines) or "nothing quarantined", rows)

    def _show(self, request):
        model = _model(request)
        _published(self.core, model)
        version = v.version("version", request.version)
        info = registry.show(self.core.store, model, version)
        if version and not info["versions"]:
            raise not_found(f"version: {version} of {model!r} was never published")
        return _reply(registry.describe_show(info), info)

    def _lineage(self, request):
        model = _model(request)
        version = v.version("version", request.version, minimum=1)
        info = registry.lineage(self.core.store, model, version)
        if info is None:
            raise not_found(f"version: {version} of {v.cut(model)} was never published; expected a published version")
        return _reply(registry.describe(info), info)

    def _republish(self, request, action: str):
        model = _model(request)
        versions = _published(self.core, model)
        version = v.version("version", request.version, minimum=0 if action == "rollback" else 1)
        if version and version not in {p.version for p in versions}:
            raise not_found(f"version: {version} of {model!r} was never published; expected one of "
                            f"{sorted(p.version for p in versions)[-20:]}")
        try:
            if action == "rollback":
                published = self.core.ct.rollback(model, version, _reason(request, required=False))
            else:
                published = self.core.ct.republish(model, version, "promote", _reason(request, required=False))
        except KeyError as exc:
            raise not_found(f"version: {exc.args[0]}") from None
        text = f"{action}: {model} version {published.version} published (the bytes of an earlier version)"
        return _reply(text, {"model": model, "version": published.version, "sha256": published.sha256})

    def _federated_round(self, request):
        from edgeloop.protocol.errors import failed_precondition

        from .federated import RoundError

        model = _model(request)
        reason = _reason(request, required=False) or "operator"
        try:
            outcome = self.core.federated.run_round(model, reason)
        except RoundError as exc:
            raise failed_precondition(f"model: {v.cut(model)}: {exc}") from None
        text = f"federated round {outcome['round_id']} of {model}: {outcome['state']}: {outcome['reason']}"
        return _reply(text, outcome)
