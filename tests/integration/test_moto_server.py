"""moto on cheroot (emulator/moto_server.py): kept-alive connections, werkzeug's environ, and a
stop that does not wait for long polls. Real servers on 127.0.0.1, real sockets."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from anyio.to_thread import run_sync as to_thread
from botocore.config import Config
from botocore.exceptions import ClientError

from emulator import Stack
from emulator.moto_server import MotoServer
from shared.aws.provision import AccessKey

ECHOED = (
    "RAW_URI",
    "PATH_INFO",
    "SERVER_NAME",
    "REMOTE_PORT",
    "HTTP_X_AMZ_META_MY_KEY",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_PLAIN_HEADER",
    "moto.preserved_header_names",
)


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI application that answers with the environ entries under test."""
    body = json.dumps({key: environ[key] for key in ECHOED if key in environ}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def served(app: Any = None) -> Iterator[MotoServer]:
    server = MotoServer(app=app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def echo_server() -> Iterator[MotoServer]:
    yield from served(echo)


def get(connection: http.client.HTTPConnection, path: str, headers: list[tuple[str, str]]) -> Any:
    connection.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in headers:
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 200
    assert (response.getheader("Connection") or "").lower() != "close"
    return json.loads(response.read())


def test_one_connection_carries_many_calls(echo_server: MotoServer) -> None:
    host, port = echo_server.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        ports = {get(connection, "/", [])["REMOTE_PORT"] for _ in range(5)}
    finally:
        connection.close()
    # werkzeug's server closes after each answer: http.client would reconnect from new ports.
    assert len(ports) == 1


def test_environ_is_the_one_moto_gets_from_werkzeug(echo_server: MotoServer) -> None:
    host, port = echo_server.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        env = get(
            connection,
            "/bucket/a%2Fb?list-type=2",
            [
                ("x-amz-meta-my_key", "metadata"),
                ("X-Forwarded-For", "10.0.0.1"),
                ("X_Forwarded_For", "spoofed"),
                ("Plain_Header", "dropped"),
            ],
        )
    finally:
        connection.close()
    assert env["RAW_URI"] == "/bucket/a%2Fb?list-type=2"  # undecoded, for moto's S3
    assert env["PATH_INFO"] == "/bucket/a/b"
    assert env["SERVER_NAME"] == host
    assert env["HTTP_X_AMZ_META_MY_KEY"] == "metadata"
    assert env["moto.preserved_header_names"] == {"HTTP_X_AMZ_META_MY_KEY": "x-amz-meta-my_key"}
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"  # the underscored one does not stand in
    assert "HTTP_PLAIN_HEADER" not in env


def client(url: str, service: str, key: AccessKey) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
        config=Config(retries={"max_attempts": 1}),  # a 500 is an answer here, not a fault
    )


@pytest.fixture
def admin(stack: Stack) -> AccessKey:
    """The session emulator's administrator: moto's state (and IAM enforcement) is global, so
    every server in this process answers from it, the one under test and werkzeug alike."""
    assert stack.endpoint.admin is not None
    return stack.endpoint.admin


@pytest.fixture
def cheroot_url(stack: Stack) -> str:
    """The emulator's own server: moto on cheroot (emulator/moto_backend.py)."""
    assert stack.endpoint.url is not None
    return stack.endpoint.url


@pytest.fixture
def werkzeug_url(stack: Stack) -> Iterator[str]:
    """moto's own server (werkzeug) beside it: the answers to compare."""
    from moto.server import ThreadedMotoServer

    werkzeug = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    werkzeug.start()
    try:
        host, port = werkzeug.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        werkzeug.stop()


def s3_answers(s3: Any, bucket: str) -> dict[str, Any]:
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"slash")
    s3.put_object(Bucket=bucket, Key="a%2Fb", Body=b"encoded slash")
    s3.put_object(Bucket=bucket, Key="c d+e", Body=b"space and plus")
    s3.put_object(Bucket=bucket, Key="alone", Body=b"", Metadata={"my_key": "1"})
    try:
        # Signed with both names, received with one (an underscored header never stands in
        # for a dashed one): moto refuses the signature when it checks signatures.
        s3.put_object(Bucket=bucket, Key="both", Body=b"", Metadata={"my_key": "1", "my-key": "2"})
        both: Any = s3.head_object(Bucket=bucket, Key="both")["Metadata"]
    except ClientError as exc:
        both = exc.response["Error"]["Code"]
    return {
        "keys": sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]),
        "bodies": {
            key: s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in ("a/b", "a%2Fb", "c d+e")
        },
        "metadata": s3.head_object(Bucket=bucket, Key="alone")["Metadata"],
        "both": both,
    }


@pytest.mark.anyio
async def test_s3_answers_as_on_werkzeug(
    cheroot_url: str, werkzeug_url: str, admin: AccessKey
) -> None:
    expected = await to_thread(s3_answers, client(werkzeug_url, "s3", admin), "on-werkzeug")
    answers = await to_thread(s3_answers, client(cheroot_url, "s3", admin), "on-cheroot")
    assert answers == expected
    assert answers["bodies"]["a%2Fb"] == b"encoded slash"  # not the key "a/b"
    assert answers["metadata"] == {"my_key": "1"}


def unimplemented_answer(url: str, key: AccessKey) -> tuple[int, dict[str, str]]:
    sqs = client(url, "sqs", key)
    with pytest.raises(ClientError) as raised:
        sqs.start_message_move_task(SourceArn="arn:aws:sqs:us-east-1:123456789012:none")
    response: Any = raised.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]


@pytest.mark.anyio
async def test_an_unimplemented_action_is_answered_as_on_werkzeug(
    cheroot_url: str, werkzeug_url: str, admin: AccessKey
) -> None:
    answer = await to_thread(unimplemented_answer, cheroot_url, admin)
    assert answer == await to_thread(unimplemented_answer, werkzeug_url, admin)
    # werkzeug's page, which shared/sqs/dlq.py reads as "not implemented"
    assert answer[0] == 500
    assert answer[1]["Message"].startswith("<!doctype html>")


@pytest.mark.anyio
async def test_stop_leaves_long_polls_behind_and_holds_no_process_open(admin: AccessKey) -> None:
    await to_thread(stop_during_a_long_poll, admin)


def stop_during_a_long_poll(admin: AccessKey) -> None:
    before = set(threading.enumerate())
    server = MotoServer()
    server.start()
    try:
        started_threads = set(threading.enumerate()) - before
        # Every thread the server started is a daemon thread, as werkzeug's are.
        assert len(started_threads) > 100
        assert [t.name for t in started_threads if not t.daemon] == []
        sqs = client(server.url, "sqs", admin)
        queue = sqs.create_queue(QueueName="moto-server-long-poll")["QueueUrl"]
        polling = threading.Thread(
            target=lambda: sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=20), daemon=True
        )
        polling.start()
        time.sleep(0.5)  # the receive is in moto's wait
        assert polling.is_alive()
    finally:
        stopping = time.monotonic()
        server.stop()
    # cheroot's own stop would wait for the worker in the long poll: up to 20 s.
    assert time.monotonic() - stopping < 10
