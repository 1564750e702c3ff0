"""Where an escalated request goes, and the one hop that takes it there (joint inference's mesh side).

``EscalationSender`` is the ``send`` the node hands to ``serving.escalation.Escalation``: the target
is ``policy.target_address``, or the node of zone ``policy.target_zone`` that placement prefers for
the request's id among those serving the target model — deterministic, so one request's rows always
go to the same big node.  The request is marked forwarded, so the target serves it itself: one hop.
No failover to a second target: the budget is short, and the local answer is the fallback.
"""
from __future__ import annotations

import grpc

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.membership import Membership
from edgeloop.mesh.router import FORWARDED


class NoTarget(Exception):
    """No node can take the escalated request (the message says why)."""


class EscalationSender:
    """``send(policy, request, timeout_s)`` over this node's channels (and membership, for zone targets)."""

    def __init__(self, self_id: str, membership: Membership | None, pool: ChannelPool) -> None:
        self.self_id = self_id
        self.membership = membership
        self.pool = pool

    def target_address(self, policy, request) -> str:
        """The address of the node that answers ``request`` under ``policy``; NoTarget when none can."""
        if policy.target_address:
            return policy.target_address
        membership = self.membership
        if membership is None:
            raise NoTarget(f"target_zone {policy.target_zone!r} needs the mesh (mesh.enabled = true); "
                           f"no target_address is configured")
        candidates = membership.placement().preference(request.id or policy.target_model, policy.target_model,
                                                       policy.target_version)
        for node_id in candidates:
            member = membership.get(node_id)
            if node_id != self.self_id and member is not None and member.alive and member.zone == policy.target_zone:
                return member.address
        wanted = f"model {policy.target_model!r}" + (
            f" version {policy.target_version}" if policy.target_version is not None else "")
        raise NoTarget(f"no live node in zone {policy.target_zone!r} serves {wanted} "
                       f"({len(candidates)} node(s) serve it in any zone)")

    def __call__(self, policy, request, timeout_s: float):
        address = self.target_address(policy, request)
        request.parameters[FORWARDED].bool_param = True  # the target serves it itself: never a second hop
        try:
            return self.pool.get(address).inference.ModelInfer(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise NoTarget(f"{address}: {exc.code().name}: {(exc.details() or '')[:200]}") from None


__all__ = ["EscalationSender", "NoTarget"]
