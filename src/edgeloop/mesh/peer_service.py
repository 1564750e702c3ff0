"""The ``edgeloop.v1.Peer`` service: tells peers (and clients) who this node is.

Describe answers identity (with the mesh name, which callers check), ready model versions,
membership epoch and queue depth — what static peers and seed-based clients need to join the
view, and what spill routing reads.  An empty model list means "alive, no model ready yet".
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping

import grpc

from edgeloop.mesh.membership import DEFAULT_MESH, PROTOCOL_VERSION
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.auth import (NONCE_MAX_BYTES, NONCE_MIN_BYTES, TOKEN_METADATA_KEY, membership_proof,
                                    token_matches)


DEFAULT_PEER_CHUNK_BYTES = 1 << 20
MAX_PEER_CHUNK_BYTES = 4 << 20


class PeerServicer(mesh_pb2_grpc.PeerServicer):
    """Describe from live callbacks, so every answer is current."""

    def __init__(
        self,
        identity: Callable[[], mesh_pb2.NodeIdentity],
        ready_models: Callable[[], Mapping[str, list[int]]],
        queue_depth: Callable[[], int],
        epoch: Callable[[], int],
        members: Callable[[], Iterable] | None = None,
        token: str | None = None,
    ):
        """``token``: the fleet token; callers must carry it, and a challenge is answered with a proof."""
        self._token = token
        self._identity = identity
        self._members = members
        self._ready_models = ready_models
        self._queue_depth = queue_depth
        self._epoch = epoch
        #: ``export(model, digest, keys, remove) -> [(key, bytes)]``: entity feature state (set by the node)
        self.export_entities = None

    def Describe(self, request, context):
        if self._token is not None and not token_matches(context.invocation_metadata(), self._token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"Peer.Describe needs the fleet token in metadata {TOKEN_METADATA_KEY!r} (missing or wrong)")
        nonce = request.nonce if request is not None else b""
        if nonce and not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"nonce: got {len(nonce)} bytes, expected "
                                                            f"{NONCE_MIN_BYTES}..{NONCE_MAX_BYTES} random bytes")
        desc = mesh_pb2.NodeDescription(
            node=self._identity(),
            membership_epoch=self._epoch(),
            queue_depth=max(0, min(int(self._queue_depth()), 2**32 - 1)),
        )
        for model, versions in sorted(self._ready_models().items()):
            for v in sorted(versions):
                desc.models.add(model=model, version=int(v), state="READY")
        for member in self._members() if self._members is not None else ():
            if member.node_id == desc.node.node_id or not member.first_hand:
                continue  # passing on second-hand members could keep a departed node alive forever
            state = desc.members.add(state=member.state)
            state.node.CopyFrom(node_identity(member.node_id, member.host, member.grpc_port, member.metrics_port,
                                              member.weight, member.zone, desc.node.mesh_name))
            for model, versions in sorted(member.models.items()):
                for v in versions:
                    state.models.add(model=model, version=int(v), state="READY")
        if nonce and self._token is not None:
            desc.proof = membership_proof(self._token, nonce, desc.node.node_id)
        return desc

    #: set by the node: sha256 -> the path of a complete artifact this node holds, or None
    artifacts: Callable[[str], object] | None = None

    def EntityState(self, request, context):
        """Some entities' real-time feature state, for their new owner (token-guarded like Describe)."""
        if self._token is not None and not token_matches(context.invocation_metadata(), self._token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"Peer.EntityState needs the fleet token in metadata {TOKEN_METADATA_KEY!r} (missing or wrong)")
        from edgeloop.mesh.handover import answer_entity_state

        answer = answer_entity_state(request, self.export_entities)
        if isinstance(answer, tuple):
            context.abort(*answer)
        return answer

    def FetchArtifact(self, request, context):
        """Stream an artifact this node holds, in chunks, so peers need not fetch it from the coordinator.

        The receiver verifies every chunk against its signed manifest, so a peer is trusted for nothing."""
        if self._token is not None and not token_matches(context.invocation_metadata(), self._token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"Peer.FetchArtifact needs the fleet token in metadata {TOKEN_METADATA_KEY!r} (missing or "
                          f"wrong)")
        sha = request.sha256
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sha256: got {sha[:80]!r}, expected 64 lowercase hex "
                                                            f"digits")
        if request.chunk_size > MAX_PEER_CHUNK_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk_size: got {request.chunk_size}, expected 0 "
                                                            f"(default {DEFAULT_PEER_CHUNK_BYTES}) or at most "
                                                            f"{MAX_PEER_CHUNK_BYTES} bytes")
        path = self.artifacts(sha) if self.artifacts is not None else None
        if path is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"sha256: got {sha!r}, expected an artifact this node holds")
        chunk = request.chunk_size or DEFAULT_PEER_CHUNK_BYTES
        try:
            fh = open(path, "rb")
        except OSError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"sha256: {sha!r} is no longer held by this node")
        with fh:
            total = os.fstat(fh.fileno()).st_size
            offset = request.offset
            if offset > total:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"offset: got {offset}, expected 0..{total}")
            fh.seek(offset)
            sent = 0
            while offset < total and context.is_active():
                data = fh.read(chunk)
                if not data:
                    return
                yield mesh_pb2.ArtifactChunk(sha256=sha, offset=offset, total_size=total, data=data)
                self.bytes_sent += len(data)
                offset += len(data)
                sent += 1
                if sent == request.max_chunks:
                    return

    bytes_sent = 0


def node_identity(node_id: str, host: str, grpc_port: int, metrics_port: int, weight: float,
                  zone: str, mesh_name: str = DEFAULT_MESH) -> mesh_pb2.NodeIdentity:
    return mesh_pb2.NodeIdentity(node_id=node_id, host=host, grpc_port=grpc_port,
                                 metrics_port=max(0, int(metrics_port or 0)),  # -1/None: metrics off
                                 weight=weight, zone=zone, protocol_version=PROTOCOL_VERSION, mesh_name=mesh_name)
