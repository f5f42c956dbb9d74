"""The shape every error answer of the REST server must have: `{"error": {"message", "type", "param",
"code"}}` as JSON, with a readable one-part message (no traceback, no Rust backtrace)."""

from typing import Any, Dict

import httpx


def assert_error_object(response: httpx.Response) -> Dict[str, Any]:
    """Checks the shape and returns the inner error object."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert "Traceback" not in error["message"] and "\n   0: " not in error["message"], error
    return error
