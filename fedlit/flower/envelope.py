"""How a fedlit request and its reply ride in Flower messages: one ``ConfigRecord`` holding the method, a
nonce and the payload as plain msgpack bytes (:mod:`fedlit.wire`, never pickle). A reply names its client and
echoes the request's nonce, so one from another request (replayed from an earlier round) or from another
party is refused, naming the client."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from fedlit.backends.messages import ClientFailure, FitIns, FitRes
from fedlit.inference.messages import Continuations, Query
from fedlit.wire import pack, unpack

RECORD = "fedlit"
MESSAGE_TYPE = "query"


# The dataclasses a request or reply may hold (a fit's, private inference's); a client mod's settings are plain data
# inside FitIns.
KINDS = {cls.__name__: cls for cls in (FitIns, FitRes, Query, Continuations)}


@dataclass
class Request:
    method: str
    nonce: str
    payload: Any


def request_content(method: str, payload: Any) -> tuple[RecordDict, str]:
    """The content of a request message and its fresh nonce."""
    nonce = secrets.token_hex(16)
    return RecordDict({RECORD: ConfigRecord({"method": method, "nonce": nonce, "payload": pack(payload)})}), nonce


def read_request(message: Message) -> Request:
    record = message.content.config_records[RECORD]
    return Request(str(record["method"]), str(record["nonce"]), unpack(record["payload"], KINDS, "fedlit request"))


def reply_content(request: Request, client_id: str, reply: Any) -> RecordDict:
    """A party's reply: its value, or the failure's reason (a party's exception is its own, not the run's)."""
    fields = {"nonce": request.nonce, "client": client_id}
    if isinstance(reply, ClientFailure):
        fields.update(failure=reply.reason, seconds=reply.seconds, raised=reply.raised)
    else:
        fields["payload"] = pack(reply)
    return RecordDict({RECORD: ConfigRecord(fields)})


def read_reply(message: Message, client_id: str | None, nonce: str) -> Any:
    """The reply's value or :class:`ClientFailure`: a Flower error, garbage bytes, another client's reply or
    one that answers another request are failures of ``client_id``, named (``None``: any client may answer,
    as when the server asks a SuperNode which client it serves)."""
    if message.has_error():
        return ClientFailure(f"Flower error {message.error.code}: {message.error.reason}")
    try:
        record = message.content.config_records[RECORD]
        sender, echoed = record["client"], record["nonce"]
    except (KeyError, AttributeError) as error:
        return ClientFailure(f"client '{client_id}' sent a reply without fedlit's record ({error})")
    client_id = sender if client_id is None else client_id
    if sender != client_id or echoed != nonce:
        return ClientFailure(f"client '{client_id}' sent a reply to another request (from '{sender}', "
                             "replayed or forged): refused")
    if "failure" in record:
        return ClientFailure(str(record["failure"]), float(record["seconds"]), bool(record.get("raised", False)))
    try:
        return unpack(record["payload"], KINDS, "fedlit reply")
    except (ValueError, TypeError) as error:
        return ClientFailure(f"client '{client_id}' sent garbage: {error}")
