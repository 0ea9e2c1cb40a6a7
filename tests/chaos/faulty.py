"""Run a service with a share of its SQS DeleteMessage calls failing.

    python -m tests.chaos.faulty services.persist      (CHAOS_DELETE_FAILURE_RATE=0.3)

A botocore event hook on the service's SQS client raises a connection error before a share of
``DeleteMessageBatch`` calls are sent, as a network blip would: the effect was done, the delete
is lost, and SQS delivers the message again. This lives in the tests, not in the services: the
production code has no fault switches.
"""

from __future__ import annotations

import os
import random
import runpy
import sys
from typing import Any

from botocore.exceptions import EndpointConnectionError

from shared.aws.clients import AwsClients


def install(rate: float, seed: int | None = None) -> None:
    rng = random.Random(seed)
    original = AwsClients._client

    def fail_some(**kwargs: Any) -> None:
        if rng.random() < rate:
            sys.stderr.write("chaos: DeleteMessageBatch dropped\n")
            raise EndpointConnectionError(endpoint_url="chaos://delete-dropped")

    async def client(self: AwsClients, name: str) -> object:
        created = await original(self, name)
        if name == "sqs" and not getattr(created, "_chaos_hooked", False):
            events = created.meta.events  # type: ignore[attr-defined]
            events.register("before-send.sqs.DeleteMessageBatch", fail_some)
            created._chaos_hooked = True  # type: ignore[attr-defined]
        return created

    AwsClients._client = client  # type: ignore[method-assign]


if __name__ == "__main__":
    install(float(os.environ.get("CHAOS_DELETE_FAILURE_RATE", "0.3")))
    module = sys.argv[1]
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
