import json

import pytest

from shared.errors import TopologyError
from shared.topology import DEFAULT_MODEL, SERVICES, Arns, Topology

ARNS = Arns(region="eu-west-1", account_id="111122223333")


def test_default_topology_names_every_queue_with_its_dlq() -> None:
    topology = Topology(models=("a", "b"))
    names = [q.name for q in topology.queues]
    assert names == ["conveyor-infer-a", "conveyor-infer-b", "conveyor-results", "conveyor-notify"]
    assert [q.dlq_name for q in topology.queues] == [f"{n}-dlq" for n in names]
    assert topology.infer_queue("b").name == "conveyor-infer-b"
    assert [b.name for b in topology.buckets] == ["conveyor-payloads", "conveyor-models"]


def test_prefix_separates_stacks() -> None:
    a, b = Topology(prefix="alice"), Topology(prefix="bob")
    assert {q.name for q in a.queues}.isdisjoint({q.name for q in b.queues})
    assert {x.name for x in a.buckets}.isdisjoint({x.name for x in b.buckets})
    assert a.user_name("infer") == "alice-infer"


def test_redrive_policy_and_retention() -> None:
    topology = Topology(max_receive_count=3, notify_max_receive_count=12)
    for queue in topology.queues:
        policy = json.loads(queue.redrive_policy(ARNS.queue(queue.dlq_name)))
        assert policy == {
            "deadLetterTargetArn": f"arn:aws:sqs:eu-west-1:111122223333:{queue.dlq_name}",
            "maxReceiveCount": 12 if queue.key == "notify" else 3,
        }
        assert int(queue.dlq_attributes("source")["MessageRetentionPeriod"]) > int(
            queue.attributes()["MessageRetentionPeriod"]
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "Upper"},
        {"prefix": "x"},
        {"prefix": "a" * 25},
        {"prefix": "has_underscore"},
        {"models": ()},
        {"models": ("Bad Name",)},
        {"models": ("dup", "dup")},
        {"max_receive_count": 0},
        {"retention_s": 14 * 86_400, "dlq_retention_s": 14 * 86_400},
    ],
)
def test_invalid_topologies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(TopologyError):
        Topology(**kwargs)  # type: ignore[arg-type]


def test_unknown_model_and_service_are_refused() -> None:
    topology = Topology()
    with pytest.raises(TopologyError, match="not served"):
        topology.infer_queue("nope")
    with pytest.raises(TopologyError, match="unknown service"):
        topology.statements("billing", ARNS)


def _grants(service: str, topology: Topology) -> set[tuple[str, str]]:
    return {
        (action, resource)
        for statement in topology.statements(service, ARNS)
        for action in statement.actions
        for resource in statement.resources
    }


def test_policies_are_least_privilege() -> None:
    topology = Topology(models=("m1", "m2"))
    q = ARNS.queue
    infer_queues = {q("conveyor-infer-m1"), q("conveyor-infer-m2")}
    ingest = _grants("ingest", topology)
    assert {r for a, r in ingest if a == "sqs:SendMessage"} == infer_queues
    assert not any(a in ("sqs:ReceiveMessage", "sqs:DeleteMessage") for a, _ in ingest)
    # ingest offloads payloads and never reads them back.
    assert ("s3:PutObject", "arn:aws:s3:::conveyor-payloads/*") in ingest
    assert ("s3:GetObject", "arn:aws:s3:::conveyor-payloads/*") not in ingest
    # ingest reads models' LATEST pointers (is a version deployed?), no model file.
    assert {r for a, r in ingest if r.startswith("arn:aws:s3:::conveyor-models")} == {
        "arn:aws:s3:::conveyor-models/*/LATEST"
    }
    infer = _grants("infer", topology)
    assert {r for a, r in infer if a == "sqs:ReceiveMessage"} == infer_queues
    assert {r for a, r in infer if a == "sqs:SendMessage"} == {q("conveyor-results")}
    assert ("s3:GetObject", "arn:aws:s3:::conveyor-models/*") in infer
    persist = _grants("persist", topology)
    assert {r for a, r in persist if a == "sqs:ReceiveMessage"} == {q("conveyor-results")}
    assert {r for a, r in persist if a == "sqs:SendMessage"} == {q("conveyor-notify")}
    notify = _grants("notify", topology)
    assert {r for a, r in notify if a.startswith("sqs:")} <= {q("conveyor-notify")}
    for service in SERVICES:
        grants = _grants(service, topology)
        assert all(r != "*" and "*" not in a for a, r in grants), service
        # No service may touch a dead-letter queue or write models.
        assert not any(r.endswith("-dlq") for _, r in grants), service
        assert ("s3:PutObject", "arn:aws:s3:::conveyor-models/*") not in grants
        document = topology.policy_document(service, ARNS)
        assert document["Version"] == "2012-10-17"
        assert all(s["Effect"] == "Allow" for s in document["Statement"])


def test_default_model_is_served() -> None:
    assert Topology().models == (DEFAULT_MODEL,)
