"""The model registry's read side: versions, aliases, evaluations and lineage, from the store's CT tables.

``lineage(store, model, version)`` answers, for one published version: which trigger, which data window
(rows per edge, what was quarantined), which code version and seed, which evaluation, which
compression, and which edges serve it now (from their status reports).
"""
from __future__ import annotations


def serving_edges(store, model: str, version: int) -> list[str]:
    """Edges whose latest report lists ``model`` ``version`` as READY."""
    out = []
    for node in store.nodes():
        for entry in node.models or ():
            if len(entry) >= 4 and entry[0] == model and int(entry[1]) == version and entry[3] == "READY":
                out.append(node.node_id)
                break
    return out


def versions(store, model: str) -> list[dict]:
    """Every published version with its source (push or a CT run) and aliases."""
    aliases = store.aliases(model)
    by_version: dict[int, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(v, []).append(alias)
    out = []
    for p in store.published_models():
        if p.model != model:
            continue
        arts = [a for a in store.artifacts(model, "model", p.version) if a["sha256"] == p.sha256]
        props = arts[0]["properties"] if arts else {}
        run_id = props.get("run_id")
        source = "push"
        if props.get("action"):
            source = f"{props['action']} of version {props.get('source_version')} (run {run_id})"
        elif run_id:
            source = f"ct run {run_id}"
        out.append({"version": p.version, "sha256": p.sha256, "size": p.size, "created_ms": p.created_ms,
                    "source": source, "run_id": run_id,
                    "aliases": sorted(by_version.get(p.version, [])),
                    "serving_edges": serving_edges(store, model, p.version)})
    return out


def lineage(store, model: str, version: int) -> dict | None:
    """Where ``model`` ``version`` came from; None when that version was never published."""
    found = [v for v in versions(store, model) if v["version"] == version]
    if not found:
        return None
    entry = found[0]
    out = {"model": model, "version": version, "sha256": entry["sha256"], "source": entry["source"],
           "aliases": entry["aliases"], "serving_edges": entry["serving_edges"]}
    run_id = entry["run_id"]
    if not run_id:
        out["note"] = "published by push (or outside the loop): no trigger, window or evaluation behind it"
        return out
    steps = store.executions(model, run_id)
    run = next((s for s in steps if s["type"] == "run"), None)
    if run is not None:
        p = run["properties"]
        out["trigger"] = {"kind": p.get("trigger"), "evidence": p.get("evidence")}
        out["code_version"] = p.get("code_version")
        out["seed"] = p.get("seed")
        out["trainer"] = p.get("trainer")
        out["parent_version"] = p.get("champion_version")
    for s in steps:
        if s["type"] == "validation":
            window = [a for a in store.artifacts(model, "data_window") if [a["id"]] == [o[0] for o in s["outputs"]]]
            if window:
                w = window[0]["properties"]
                out["data_window"] = {k: w.get(k) for k in ("scope", "label_ids", "rows", "rows_clean",
                                                            "rows_per_edge", "clean_rows_per_edge", "quarantined",
                                                            "summary")}
        elif s["type"] == "training":
            out["training"] = {k: s["properties"].get(k) for k in ("trainer", "seed", "rows", "validation_rows",
                                                                   "warm_start", "validation")}
        elif s["type"] == "compression":
            out["compression"] = {"chosen": s["properties"].get("chosen"), "reason": s["properties"].get("reason")}
        elif s["type"] == "rollout":  # its staged rollout ended rolled back: never a champion again
            out["rollout"] = {"state": s["state"], **s["properties"]}
    evals = store.evaluations(model, run_id)
    if evals:
        e = evals[-1]
        out["evaluation"] = {"blessed": e["blessed"], "reason": e["reason"], "metric": e["metric"],
                             "challenger": e["challenger"], "champion": e["champion"]}
    return out


def describe(info: dict) -> str:
    """A lineage record as lines a person reads."""
    lines = [f"{info['model']}:{info['version']}  sha256 {info['sha256'][:16]}…  from {info['source']}"
             + (f"  aliases {', '.join(info['aliases'])}" if info.get("aliases") else "")]
    if "note" in info:
        lines.append(f"  {info['note']}")
    if "trigger" in info:
        lines.append(f"  trigger: {info['trigger']['kind']}: {info['trigger']['evidence']}")
        lines.append(f"  code: edgeloop {info.get('code_version')}  trainer {info.get('trainer')}  "
                     f"seed {info.get('seed')}  warm start from version {info.get('parent_version')}")
    w = info.get("data_window")
    if w:
        lines.append(f"  data window: {w.get('scope')}; {w.get('rows_clean')} of {w.get('rows')} rows clean; "
                     f"per edge {w.get('rows_per_edge')}")
        for q in w.get("quarantined") or ():
            lines.append(f"    quarantined {q['batch_id']} from {q['edge']} ({q['rows']} rows): "
                         f"{', '.join(q['checks'])}")
    if "evaluation" in info:
        lines.append(f"  evaluation: {info['evaluation']['reason']}")
    if "compression" in info:
        lines.append(f"  compression: {info['compression']['reason']}")
    if "rollout" in info:
        r = info["rollout"]
        lines.append(f"  rollout {r.get('rollout_id')}: {r['state']}: {r.get('reason')}; the fleet serves version "
                     f"{r.get('served_again')} again")
    lines.append(f"  served now by: {', '.join(info['serving_edges']) or 'no edge (per their latest reports)'}")
    return "\n".join(lines)


def show(store, model: str, version: int = 0) -> dict:
    """A model's versions (or one), its aliases, and every evaluation with its numbers."""
    vs = versions(store, model)
    if version:
        vs = [v for v in vs if v["version"] == version]
    evals = store.evaluations(model)
    by_run: dict = {}
    for e in evals:
        by_run.setdefault(e["run_id"], []).append(e)
    published_runs = {v["run_id"] for v in versions(store, model) if v["run_id"]}
    for v in vs:
        v["evaluations"] = [{k: e[k] for k in ("blessed", "reason", "metric", "challenger", "champion")}
                            for e in by_run.get(v["run_id"], [])]
    refused = [] if version else [{"run_id": e["run_id"], "reason": e["reason"]} for e in evals
                                  if e["run_id"] not in published_runs]
    return {"model": model, "aliases": store.aliases(model), "versions": vs, "refused_runs": refused}


def describe_show(info: dict) -> str:
    lines = [f"{info['model']}  aliases: " + (", ".join(f"{a}={v}" for a, v in sorted(info["aliases"].items()))
                                              or "none")]
    for v in info["versions"]:
        lines.append(f"  version {v['version']}  {v['size']} bytes  sha256 {v['sha256'][:16]}…  from {v['source']}"
                     + (f"  [{', '.join(v['aliases'])}]" if v["aliases"] else "")
                     + f"  served by {', '.join(v['serving_edges']) or 'none'}")
        for e in v.get("evaluations", ()):
            lines.append(f"    evaluation: {e['reason']}")
    for r in info.get("refused_runs", ()):
        lines.append(f"  run {r['run_id']} not published: {r['reason']}")
    return "\n".join(lines)
