"""Serve's request router for the workers: its usual "power of two choices", a pin, and LoRA affinity.

- A request whose multiplexed model id is "replica:<id>" goes to that replica when it is running (else to
  any): how a test (or a caller that knows where a draft's models are warm) sends a job to one replica.
- A job naming LoRAs (job["loras"]) prefers the replicas that already hold them all (each replica reports
  its loaded LoRAs: EngineWorker.record_routing_stats); when those are busy, any other takes it.
"""

from __future__ import annotations

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RunningReplica

PIN_PREFIX = "replica:"


def pin(replica_id: str) -> str:
    """The multiplexed model id that pins a request to `replica_id`."""
    return PIN_PREFIX + replica_id


class PinningRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        wanted = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if wanted.startswith(PIN_PREFIX):
            pinned = [r for r in candidate_replicas if r.replica_id.unique_id == wanted[len(PIN_PREFIX) :]]
            if pinned:
                return [pinned]
            pending_request.metadata.multiplexed_model_id = ""  # that replica is gone: any other will do
        wanted_loras = set(_job(pending_request).get("loras") or ())
        if wanted_loras:
            holding = [r for r in candidate_replicas if wanted_loras <= set((r.routing_stats or {}).get("loras", ()))]
            if holding and len(holding) < len(candidate_replicas):
                return [holding, [r for r in candidate_replicas if r not in holding]]  # ranks: holding first
        return await super().choose_replicas(candidate_replicas, pending_request)


def _job(pending_request: PendingRequest | None) -> dict:
    args = pending_request.args if pending_request is not None else ()
    return args[0] if args and isinstance(args[0], dict) else {}
