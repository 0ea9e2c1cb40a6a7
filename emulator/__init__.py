"""The offline harness: an AWS emulator with IAM enforced, PostgreSQL, the provisioned topology."""

from emulator.backend import AwsBackend, AwsEndpoint, BackendUnavailable, PostgresBackend
from emulator.harness import Emulator, EmulatorOptions, Stack

__all__ = [
    "AwsBackend",
    "AwsEndpoint",
    "BackendUnavailable",
    "Emulator",
    "EmulatorOptions",
    "PostgresBackend",
    "Stack",
]
