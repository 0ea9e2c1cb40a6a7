import json
import uuid

import pytest

from shared.messages import Envelope, MessageType, PoisonMessage, decode_envelope


def envelope_json(**overrides: object) -> str:
    data = {
        "schema_version": 1,
        "type": "job.result",
        "job_id": str(uuid.uuid4()),
        "tenant": "t",
        "payload": {"a": 1},
    }
    data.update(overrides)
    return json.dumps(data)


def test_round_trip() -> None:
    env = decode_envelope(envelope_json())
    assert env.type is MessageType.JOB_RESULT
    assert decode_envelope(env.model_dump_json()) == env


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "undecodable"),
        ("[]", "undecodable"),
        (envelope_json(schema_version=2), "unknown schema_version 2"),
        (envelope_json(type="job.exploded"), "type"),
        (envelope_json(payload=None), "exactly one of payload"),
        (envelope_json(extra_field=1), "extra_field"),
        (envelope_json(job_id="nope"), "job_id"),
    ],
)
def test_unusable_messages_are_poison(body: str, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        decode_envelope(body)


def test_envelopes_are_frozen() -> None:
    env = decode_envelope(envelope_json())
    with pytest.raises(ValueError, match="frozen"):
        env.tenant = "other"  # type: ignore[misc]
    assert isinstance(env, Envelope)
