"""DIMSE messages the archive cannot decode: the association is aborted, the server goes on."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.conftest import RunningServer, start_server
from tests.fuzz.dimse import (
    AE_TITLE,
    PDU_ABORT,
    association_request,
    build,
    exchange_on_new_connection,
    p_data,
    pdus,
)

ANSWER_S = 5.0


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "data", dimse_port=0, ae_title=AE_TITLE)
    yield running
    running.stop()


def _command(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    encoded = encode(ds, True, True)
    assert encoded is not None
    return encoded


def _answer_to(port: int, command: bytes) -> list[int]:
    """The PDU types the server sends after ``command`` (context 1), until it closes or
    ANSWER_S pass, on an association the harness's recorded request opens."""
    request = association_request(port)
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(request)
        received = bytearray()
        while not pdus(bytes(received))[0]:
            received += sock.recv(65536)
        assert pdus(bytes(received))[0][0][0] == 2, "the association was not accepted"
        received.clear()
        sock.sendall(p_data(1, command, True, 16384))
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
            if PDU_ABORT in [kind for kind, _ in pdus(bytes(received))[0]]:
                break
    return [kind for kind, _ in pdus(bytes(received))[0]]


@pytest.mark.parametrize(
    "missing",
    ["CommandField", "CommandDataSetType"],
)
def test_a_command_set_without_a_required_element_aborts_the_association(
    archive: RunningServer, missing: str
) -> None:
    elements: dict[str, object] = {
        "AffectedSOPClassUID": Verification,
        "CommandField": 0x0030,  # C-ECHO-RQ
        "MessageID": 1,
        "CommandDataSetType": 0x0101,
    }
    del elements[missing]
    # pynetdicom's decoder raised in its state machine: no A-ABORT, the connection left open.
    assert _answer_to(archive.dimse_port, _command(**elements)) == [PDU_ABORT]
    ae = AE(ae_title="AFTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.slow
def test_an_association_request_with_an_even_context_id_is_aborted_at_once(
    archive: RunningServer,
) -> None:
    request = bytearray(association_request(archive.dimse_port))
    # The first presentation context item (0x20): its ID, odd by PS3.8 9.3.2.2, made even.
    at = request.index(b"\x20\x00\x00", 74)
    assert request[at + 4] == 1
    request[at + 4] = 2
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", archive.dimse_port), timeout=ANSWER_S) as sock:
        sock.sendall(bytes(request))
        received = bytearray()
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    # pynetdicom's state machine raised: no answer, the connection open until the ACSE timeout.
    assert [kind for kind, _ in pdus(bytes(received))[0]] == [PDU_ABORT]
    assert time.monotonic() - started < ANSWER_S


def test_associations_share_the_supported_contexts_and_leave_them_unchanged(
    archive: RunningServer,
) -> None:
    assert archive.dimse is not None
    acceptor = archive.dimse._server
    assert acceptor is not None
    contexts = acceptor.contexts
    before = [
        (cx.abstract_syntax, cx.scu_role, cx.scp_role, list(cx.transfer_syntax)) for cx in contexts
    ]
    # One association taking the SCP role for CT (as a C-GET requester does), one without.
    taken: list[list[Any]] = [[build_role(CTImageStorage, scp_role=True)], []]
    for roles in taken:
        ae = AE(ae_title="SHARED")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE, ext_neg=roles)
        assert assoc.is_established
        (ct,) = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
        assert ct.as_scp is bool(roles)  # the requester is the SCP only when it asked to be
        # pynetdicom deep-copies them per connection: 40 ms or more of CPU for the archive's.
        (served,) = archive.served(assoc)
        assert served.acceptor.supported_contexts[0] is contexts[0]
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    after = [
        (cx.abstract_syntax, cx.scu_role, cx.scp_role, list(cx.transfer_syntax)) for cx in contexts
    ]
    assert after == before


FINDINGS = Path(__file__).parents[1] / "fuzz" / "findings" / "dimse"


def test_associations_ended_by_a_failed_negotiation_leave_the_limit_free(
    archive: RunningServer,
) -> None:
    request = association_request(archive.dimse_port)
    data = (FINDINGS / "presentation-context-without-abstract-syntax.bin").read_bytes()
    exchange = build(data, request)
    limit = archive.settings.dimse_max_associations
    for _ in range(limit + 1):
        exchange_on_new_connection(exchange, archive.dimse_port)
    # Each must leave --dimse-max-associations once it has ended, or this one is refused.
    ae = AE(ae_title="AFTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    assoc.release()


def test_an_undecodable_association_request_frees_its_place_at_once(
    archive: RunningServer,
) -> None:
    assert archive.dimse is not None
    with socket.create_connection(("127.0.0.1", archive.dimse_port), timeout=ANSWER_S) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x44" + b"\xff" * 0x44)
        with contextlib.suppress(TimeoutError):
            while sock.recv(65536):
                pass
    deadline = time.monotonic() + 3.0
    while archive.dimse.associations and time.monotonic() < deadline:
        time.sleep(0.05)
    # Its thread waited for a request that would not come until the ACSE timeout (30 s).
    assert archive.dimse.associations == 0
