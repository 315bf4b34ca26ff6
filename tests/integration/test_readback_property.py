"""Whatever store or create accepts, every read path reads; whatever they refuse changes nothing.

Generated data sets nest sequences at random depths up to and past the limit, with values of
several VRs (bulk data among them), empty sequences and empty items, written with explicit or
implicit VR and defined or undefined lengths. One server serves every example.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc.datasets import from_pydicom, to_json
from dicomrpc.workitems import WorkitemEvent
from dicomrpc_server.store.prepare import BULK_DATA_THRESHOLD
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart
from tests.upsgen import dataset, discontinued, performed, tag, workitem

LIMIT = 16  # the server's default
EXAMPLES = 25
DICOM_JSON = {"Content-Type": "application/dicom+json"}
STATION = "00081010"  # StationName, re-indexed as an extended query tag at the end
# Top-level sequences a generated instance nests in: one of no level, and one of each level
# that search results return whole.
TOP_SEQUENCES = ["ContentSequence", "ReferencedRequestSequence", "RequestAttributesSequence"]
_text = st.text(alphabet="ABCDEFGHIJ abcdefghij0123456789", min_size=1, max_size=12).map(str.strip)
LEAVES: dict[str, st.SearchStrategy[Any]] = {
    "TextValue": _text.filter(bool),  # UT
    "CodeValue": st.from_regex(r"[A-Z0-9]{1,8}", fullmatch=True),  # SH
    "NumericValue": st.lists(st.sampled_from(["1.5", "-2", "0.25", "1e3"]), max_size=3),  # DS
    "ReferencedFrameNumber": st.lists(st.integers(1, 9999), min_size=1, max_size=3),  # IS
    "PersonName": st.sampled_from(["Doe^John", "Roe^Jane^^Dr", "Ng"]),  # PN
    "ReferencedSOPInstanceUID": st.builds(lambda: str(generate_uid())),  # UI
    "Rows": st.integers(0, 65535),  # US
    "ObservationDateTime": st.sampled_from(["20240102", "20240102101112.5"]),  # DT
    "EncapsulatedDocument": st.binary(max_size=1500),  # OB: inline or bulk data
}
# Workitem sequences whose items the requirements table leaves free.
WORKITEM_SEQUENCES = ["ScheduledProcessingParametersSequence", "InputInformationSequence"]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def client(running: RunningServer) -> Iterator[Client]:
    with Client(running.target) as c:
        yield c


# -- generated data sets -----------------------------------------------------------------------


@st.composite
def items(draw: st.DrawFn, levels: int) -> Dataset:
    """An item with a few leaves, maybe an empty sequence, and ``levels`` more levels below."""
    ds = Dataset()
    for keyword in draw(st.lists(st.sampled_from(sorted(LEAVES)), max_size=3, unique=True)):
        setattr(ds, keyword, draw(LEAVES[keyword]))
    empty = draw(st.sampled_from(["none", "no items", "an empty item"]))
    if empty != "none":
        ds.ReferencedSeriesSequence = Sequence([] if empty == "no items" else [Dataset()])
    if levels:
        below = [draw(items(levels - 1))]
        if draw(st.booleans()):
            below.append(Dataset())
        ds.ContentSequence = Sequence(below)
    return ds


@st.composite
def nested(draw: st.DrawFn, top: str = "ContentSequence") -> Dataset:
    """A data set whose ``top`` sequence nests about 0 to LIMIT + 2 levels."""
    depth = draw(st.one_of(st.integers(0, LIMIT + 2), st.sampled_from([LIMIT, LIMIT + 1])))
    ds = Dataset()
    if depth:
        setattr(ds, top, Sequence([draw(items(depth - 1))]))
    return ds


def depth_of(ds: Dataset) -> int:
    """How many levels the sequences of ``ds`` nest (an SQ without items is a level)."""
    deepest = 0
    for element in ds:
        if element.VR == "SQ":
            deepest = max(deepest, 1 + max((depth_of(item) for item in element.value), default=0))
    return deepest


def _undefined_lengths(ds: Dataset) -> None:
    for element in ds:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)


def part10(extra: Dataset, station: str, implicit: bool, undefined: bool) -> tuple[bytes, Dataset]:
    ds = dcmread(io.BytesIO(ct_instance()))
    ds.StationName = station
    for element in extra:
        ds.add(element)
    if undefined:
        _undefined_lengths(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), ds


def expected_metadata(data: bytes, study: str, series: str, sop: str) -> dict[str, Any]:
    """The metadata the archive must give back: the data set as the DICOM JSON model has it."""
    base = f"studies/{study}/series/{series}/instances/{sop}"  # valid UIDs need no encoding
    message = from_pydicom(
        dcmread(io.BytesIO(data)),
        bulk_data_threshold=BULK_DATA_THRESHOLD,
        bulk_data_uri=lambda path: f"{base}/bulkdata/{path}",
    )
    obj = to_json(message)
    del obj["7FE00010"]  # pixel data is a bulk data URI, whatever its size
    return obj


def bulk_data_uris(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        if isinstance(obj.get("BulkDataURI"), str):
            yield obj["BulkDataURI"]
        for value in obj.values():
            yield from bulk_data_uris(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from bulk_data_uris(value)


def element_at(ds: Dataset, path: str) -> bytes:
    parts = path.split(".")
    for at in range(0, len(parts) - 1, 2):
        ds = ds[int(parts[at], 16)].value[int(parts[at + 1])]
    return bytes(ds[int(parts[-1], 16)].value)


# -- stored instances ----------------------------------------------------------------------------


@pytest.mark.slow
def test_whatever_store_accepts_every_read_path_reads(
    running: RunningServer, client: Client, http: httpx.Client
) -> None:
    root = running.dicomweb_url
    accepted: list[tuple[str, str]] = []

    @SETTINGS
    @given(
        top=st.sampled_from(TOP_SEQUENCES),
        data=st.data(),
        implicit=st.booleans(),
        undefined=st.booleans(),
        over_http=st.booleans(),
    )
    def store_one(
        top: str, data: st.DataObject, implicit: bool, undefined: bool, over_http: bool
    ) -> None:
        extra = data.draw(nested(top))
        station = f"RB{len(accepted)}-{generate_uid()[-6:]}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's remarks on generated values
            raw, ds = part10(extra, station, implicit, undefined)
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        before = running.archive.index.counts()
        if over_http:
            response = http.post(
                "/studies", content=multipart([raw]), headers={"Content-Type": STOW_TYPE}
            )
            stored = response.status_code == 200
            if not stored:
                assert response.status_code == 409, response.text
                (failed,) = response.json()["00081198"]["Value"]
                assert failed["00081197"]["Value"] == [272]
        else:
            result = client.store(raw).instances[0]
            stored = result.outcome != "failed"
            if not stored:
                assert (result.failure_reason, result.failure_reason_name) == (
                    272,
                    "LIMIT_EXCEEDED",
                ), result.failure_message
        assert stored == (depth_of(ds) <= LIMIT), depth_of(ds)
        event("stored" if stored else "refused")
        if not stored:
            assert running.archive.index.counts() == before
            assert http.get(f"/studies/{study}").status_code == 404
            return
        accepted.append((series, station))

        expected = expected_metadata(raw, study, series, sop)
        (metadata,) = client.metadata(study, series, sop).datasets
        got = to_json(metadata)
        del got["7FE00010"]
        assert got == expected
        response = http.get(f"/studies/{study}/series/{series}/instances/{sop}/metadata")
        assert response.status_code == 200
        (web,) = response.json()
        del web["7FE00010"]
        assert json.loads(json.dumps(web).replace(f"{root}/", "")) == expected
        for uri in list(bulk_data_uris(web))[:2]:
            value = http.get(uri, headers={"Accept": "application/octet-stream"})
            assert value.status_code == 200, uri
            assert value.content == element_at(ds, uri.rsplit("/bulkdata/", 1)[1])
        assert http.get(f"/studies/{study}/metadata").status_code == 200

        assert client.search_studies(StudyInstanceUID=study, include=["all"]).datasets
        assert client.search_series(study=study, include=["all"]).datasets
        assert client.search_instances(study=study, series=series, include=["all"]).datasets
        for path in ("/studies", f"/studies/{study}/series", f"/studies/{study}/instances"):
            params = {"includefield": "all"}
            if path == "/studies":
                params["StudyInstanceUID"] = study
            assert http.get(path, params=params).status_code == 200, path

        instance = client.retrieve_instance(study, series, sop)
        assert instance.data == raw

    store_one()
    assert accepted, "no example was accepted"

    # Re-indexing reads every stored instance's metadata back, the deepest among them.
    _, operation = client.add_query_tags([STATION])
    status = client.wait_for_reindex(operation, timeout_s=300)
    assert status.done and status.processed_instances >= len(accepted)
    for series, station in accepted:
        found = client.search_series(StationName=station).as_json()
        assert [s["0020000E"]["Value"] for s in found] == [[series]]
    client.delete_query_tag(STATION)


# -- workitems ----------------------------------------------------------------------------------


def _json_items(ds: Dataset) -> Any:
    return ds.to_json_dict(bulk_data_threshold=10**9)


class Events:
    """A subscriber to one workitem, reading on a thread."""

    def __init__(self, client: Client, uid: str) -> None:
        self.watch = client.workitems.watch(uid, since=1)
        self.events: list[WorkitemEvent] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.watch:
                self.events.append(event)
        except BaseException as exc:  # the test reads it
            self.error = exc

    def wait_for(self, count: int) -> list[WorkitemEvent]:
        for _ in range(600):
            if len(self.events) >= count or self.error is not None:
                break
            threading.Event().wait(0.05)
        self.watch.close()
        self.thread.join(30)
        assert self.error is None, self.error
        return self.events


@pytest.mark.slow
def test_whatever_create_accepts_every_workitem_operation_reads(
    client: Client, http: httpx.Client
) -> None:
    # Subscribers replay the events after a sequence number, and 0 means none: a first
    # workitem takes sequence 1, so that every generated one's events can be replayed.
    client.workitems.create(workitem())

    @SETTINGS
    @given(
        data=st.data(),
        where=st.sampled_from(WORKITEM_SEQUENCES),
        over_http=st.booleans(),
        finish=st.sampled_from(["complete", "cancel"]),
        request_cancel=st.booleans(),
    )
    def create_one(
        data: st.DataObject, where: str, over_http: bool, finish: str, request_cancel: bool
    ) -> None:
        extra = data.draw(nested(where))
        body = workitem(**{where: None})
        body.update(_json_items(extra))
        uid = str(generate_uid())
        before = len(client.workitems.search(limit=1000))
        if over_http:
            response = http.post(f"/workitems?{uid}", content=json.dumps(body), headers=DICOM_JSON)
            created = response.status_code == 201
            if not created:
                assert response.status_code == 400, response.text
                assert response.json()["reason"] == "LIMIT_EXCEEDED"
        else:
            try:
                client.workitems.create(body, uid)
                created = True
            except DicomRpcError as error:
                assert (error.code, error.reason) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "LIMIT_EXCEEDED",
                )
                assert error.field_violations[0][0].startswith(f"{where}[0].")
                created = False
        assert created == (depth_of(extra) <= LIMIT), depth_of(extra)
        event("created" if created else "refused")
        if not created:
            assert client.workitems.search(SOPInstanceUID=uid).datasets == []
            assert len(client.workitems.search(limit=1000)) == before
            return

        events = Events(client, uid)
        expected = to_json(client.workitems.get(uid).dataset)
        assert expected[tag(where)] == body[tag(where)]
        response = http.get(f"/workitems/{uid}")
        assert response.status_code == 200 and response.json() == [expected]
        (found,) = client.workitems.search(SOPInstanceUID=uid, include=["all"])
        assert to_json(found) == expected
        response = http.get("/workitems", params={"SOPInstanceUID": uid, "includefield": "all"})
        assert response.status_code == 200 and response.json() == [expected]

        count = 1  # the state report of the create
        update = data.draw(nested(where))
        update_body = _json_items(update) or dataset(ProcedureStepLabel="updated")
        try:
            client.workitems.update(uid, update_body)
            count += 1
            assert depth_of(update) <= LIMIT
        except DicomRpcError as error:
            assert error.reason == "LIMIT_EXCEEDED" and depth_of(update) > LIMIT
            assert to_json(client.workitems.get(uid).dataset) == expected
        if request_cancel:  # a SCHEDULED workitem is canceled by the request
            client.workitems.request_cancel(uid, reason="generated")
            count += 1
            assert client.workitems.get(uid).state == "CANCELED"
        else:
            transaction = client.workitems.claim(uid)
            client.workitems.request_cancel(uid, reason="generated")
            if finish == "complete":
                client.workitems.complete(uid, transaction, performed())
            else:
                client.workitems.cancel(uid, transaction, discontinued())
            count += 4  # claimed, cancel requested, updated, finished
        assert client.workitems.search(SOPInstanceUID=uid, include=["all"])
        received = events.wait_for(count)
        assert len(received) == count, [e.type for e in received]
        assert received[-1].type == "state_report"

    create_one()
