"""The botocore -> Conveyor error seam, fed the error shapes botocore produces."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from shared.aws.errors import aws_errors, translate
from shared.config import AwsSettings
from shared.errors import (
    AccessDenied,
    AwsError,
    AwsUnavailable,
    BucketNotFound,
    ConveyorError,
    QueueNotFound,
    Throttled,
)

AWS = AwsSettings(endpoint_url="http://127.0.0.1:5000", region="eu-west-1")


def client_error(code: str, message: str = "", status: int = 400, op: str = "Op") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", QueueNotFound),
        ("QueueDoesNotExist", QueueNotFound),
        ("NoSuchBucket", BucketNotFound),
        ("AccessDenied", AccessDenied),
        ("InvalidClientTokenId", AccessDenied),
        ("ThrottlingException", Throttled),
        ("InternalError", AwsError),
    ],
)
def test_codes_map_to_the_tree(code: str, kind: type[Exception]) -> None:
    error = translate(client_error(code), AWS, resource="thing")
    assert type(error) is kind
    assert isinstance(error, ConveyorError)


def test_missing_queue_names_queue_place_and_fix() -> None:
    error = translate(client_error("QueueDoesNotExist", op="GetQueueUrl"), AWS, "conveyor-results")
    assert isinstance(error, QueueNotFound)
    text = str(error)
    assert "'conveyor-results'" in text
    assert "http://127.0.0.1:5000" in text and "eu-west-1" in text
    assert "conveyor provision" in text and "make dev" in text
    assert error.resource == "conveyor-results"
    assert error.operation == "GetQueueUrl"


def test_xml_denial_from_moto_is_unwrapped() -> None:
    xml = (
        '<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>AccessDenied</Code>'
        "<Message>User: x is not authorized to perform: sqs:GetQueueUrl</Message></Error>"
        "</Errors></ErrorResponse>"
    )
    error = translate(client_error("403", xml, status=403), AWS, "q")
    assert isinstance(error, AccessDenied)
    assert error.code == "AccessDenied"
    assert "not authorized to perform: sqs:GetQueueUrl" in str(error)
    assert "<?xml" not in str(error)


def test_unreachable_endpoint() -> None:
    error = translate(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), AWS)
    assert isinstance(error, AwsUnavailable)


def test_context_manager_chains_the_cause() -> None:
    original = client_error("NoSuchBucket")
    with pytest.raises(BucketNotFound) as info, aws_errors(AWS, resource="conveyor-models"):
        raise original
    assert info.value.__cause__ is original
    assert "conveyor-models" in str(info.value)


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), aws_errors(AWS):
        raise KeyError("not ours")
