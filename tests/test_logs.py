"""The log formatters: one JSON object per line with the extra fields; text with
key=value pairs. And the RPC line's ids: an allow-list, so no voucher gets in."""

from __future__ import annotations

import io
import json
import logging

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import resources_pb2 as res_pb
from common.interceptors import message_ids
from common.logs import JsonFormatter, TextFormatter


def emit(formatter: logging.Formatter, *args, **kwargs) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_lines_have_the_standard_keys_and_the_extra_fields():
    out = emit(JsonFormatter(), "settled %s", "ses_1",
               extra={"request_id": "r-1", "duration_ms": 1.5, "code": "OK"})
    assert out.count("\n") == 1
    entry = json.loads(out)
    assert entry["level"] == "info" and entry["logger"] == "test.logs"
    assert entry["msg"] == "settled ses_1"
    assert entry["ts"].endswith("Z") and entry["ts"][10] == "T"
    assert (entry["request_id"], entry["duration_ms"], entry["code"]) == ("r-1", 1.5, "OK")


def test_a_multi_line_message_and_a_traceback_stay_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("test.logs.exc")
        logger.propagate = False
        logger.addHandler(handler)
        logger.exception("failed\nbadly")
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "error" and entry["msg"] == "failed\nbadly"
    assert "ValueError: boom" in entry["exc"]


def test_text_lines_end_with_the_fields():
    out = emit(TextFormatter(), "rpc", extra={"method": "/a.B/C", "code": "OK"})
    assert out.rstrip().endswith("INFO test.logs rpc method=/a.B/C code=OK")


def test_rpc_lines_take_only_allow_listed_ids():
    voucher = "cbv1.k1.payload.signature-that-must-not-be-logged"
    open_request = meter_pb.MeterRequest(open=meter_pb.OpenSession(
        voucher=voucher, worker_id="wrk_1", request_id="r-1", model="tiny-lm"))
    ids: dict[str, str] = {}
    message_ids(open_request, ids)
    assert ids == {"worker_id": "wrk_1", "request_id": "r-1"}

    reply = auth_pb.AuthorizeResponse(authorization=auth_pb.Authorization(
        authorization_id="auth_1", wallet_id="wal_1", voucher=voucher, amount=5))
    ids = {}
    message_ids(reply, ids)
    assert ids == {"authorization_id": "auth_1", "wallet_id": "wal_1"}
    assert voucher not in json.dumps(ids)

    ids = {"request_id": "first"}
    message_ids(auth_pb.AuthorizeRequest(request_id="second", scope=res_pb.Scope()), ids)
    assert ids == {"request_id": "first"}  # the request's ids are kept
    message_ids(object(), ids)  # an undecodable request: nothing to take
    assert ids == {"request_id": "first"}
