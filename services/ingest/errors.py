"""Every error of the API as JSON: ``{"error": "<one line>"}``, plus ``"detail"`` (one entry per
problem) for a 422, and for a 400 whose body is not JSON.

    HTTPException (404, 405, 413, 503, ...)  its status, its headers, its detail as the error
    RequestValidationError                   422, or 400 when the body is not valid JSON
    anything else                            500 "internal error"; the exception goes to the log
"""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from shared.telemetry import get_logger

__all__ = ["ErrorBody", "ValidationErrorBody", "ValidationProblem", "add_error_handlers"]

log = get_logger("ingest")


class ErrorBody(BaseModel):
    error: str = Field(description="one line saying what went wrong")


class ValidationProblem(BaseModel):
    field: str = Field(description="the field at fault, e.g. inputs[3] or callback_url")
    loc: list[str | int]
    type: str
    msg: str


class ValidationErrorBody(ErrorBody):
    detail: list[ValidationProblem]


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as JSON, as the module docstring lays out."""

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def on_invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [_problem(error) for error in exc.errors()]
        bad_json = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            reason = bad_json.get("ctx", {}).get("error", "JSON decode error")
            where = bad_json["loc"][-1]
            body = {"error": f"the body is not valid JSON: {reason} (at character {where})"}
            return JSONResponse({**body, "detail": problems}, status_code=400)
        summary = "; ".join(f"{p['field']}: {p['msg']}" for p in problems[:5])
        if len(problems) > 5:
            summary += f"; and {len(problems) - 5} more"
        return JSONResponse(
            {"error": f"invalid request: {summary}", "detail": problems}, status_code=422
        )

    async def on_crash(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", error_type=type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_crash)


def _problem(error: Any) -> dict[str, Any]:
    """One validation error, without its ``input`` (which can be the whole, large, body)."""
    loc: Sequence[str | int] = error.get("loc", ())
    return {
        "field": _field(loc),
        "loc": list(loc),
        "type": str(error.get("type", "")),
        "msg": str(error.get("msg", "")).removeprefix("Value error, "),
    }


def _field(loc: Sequence[str | int]) -> str:
    """``("body", "inputs", 3)`` -> ``inputs[3]``; ``("query", "wait")`` -> ``wait``."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"
