"""Every log line carries the request id of the request it belongs to."""

import io
import json
import logging

from portal import create_app, logs


def test_json_log_lines_carry_the_request_id(settings):
    app = create_app({**settings, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    stream = io.StringIO()
    handler = logging.getLogger("trellis").handlers[0]
    handler.setStream(stream)
    response = app.test_client().get("/no/such/page")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    request_id = response.headers["X-Request-ID"]
    assert lines and all(line["request_id"] == request_id for line in lines)
    assert {line["logger"] for line in lines} >= {"trellis.errors", "trellis.request"}
    assert any(line["message"].startswith("GET /no/such/page 404") for line in lines)


def test_text_log_lines_carry_the_request_id(settings):
    logs.configure("text", "INFO")
    stream = io.StringIO()
    logging.getLogger("trellis").handlers[0].setStream(stream)
    app = create_app({**settings, "LOG_LEVEL": "INFO"})
    logging.getLogger("trellis").handlers[0].setStream(stream)
    response = app.test_client().get("/healthz")
    assert f"[{response.headers['X-Request-ID']}] GET /healthz 200" in stream.getvalue()
