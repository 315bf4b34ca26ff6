"""Retrieve benchmark: dicomrpc (gRPC) side by side with Orthanc (WADO-RS) on the same data.

Usage (from the repository root)::

    .venv/bin/python bench/retrieve.py            # all measurements, writes RESULTS.md
    .venv/bin/python bench/retrieve.py --quick    # fewer rounds and repetitions, a smoke run

What is measured, against both servers holding the same files:

- study retrieve MB/s, 1 and 4 concurrent clients, on a 100-instance CT study (~50 MB): gRPC
  ``RetrieveStudy`` through the SDK (``Client.iter_instances``, one instance in memory at a
  time) against
  ``GET /dicom-web/studies/{uid}`` (body bytes counted as they stream);
- study metadata latency, a 100-instance and a 500-instance study: ``Client.metadata()`` against
  ``GET /dicom-web/studies/{uid}/metadata`` (the body read, not parsed);
- single-frame latency on a 1,000-frame native instance (256x256, 16-bit, 125 MiB), random
  frames: ``Client.frames()`` against ``GET .../frames/{n}``;
- the same on a JPEG 2000 lossless copy of that instance, the stored bitstream returned
  (transfer syntax ``*``);
- transcoded frames, frames/s and latency of one client's sequential single-frame requests:
  JPEG 2000 -> native (the server decodes) and native -> JPEG 2000 lossless (the server
  encodes), ``Client.frames(..., transfer_syntax=...)`` against ``GET .../frames/{n}`` with a
  ``transfer-syntax`` in ``Accept``;
- study retrieve transcoded to JPEG 2000 lossless on the 100-instance study, 1 client: MB/s of
  output and instances/s, ``RetrieveStudy`` with ``TransferOptions(transfer_syntax_uid=...)``
  against ``GET /dicom-web/studies/{uid}`` with ``transfer-syntax=1.2.840.10008.1.2.4.90``.

A transcoding Orthanc refuses (or answers in another syntax than asked) is reported "not
supported" and not timed.

Both servers run at once, each on a fresh data directory, loaded once (dicomrpc with
``Client.store()``, Orthanc with STOW-RS); then the measurements run in rounds, each round
measuring both servers (which one goes first alternates), so that a drift of the shared machine
touches both alike. Throughputs are the median of the rounds; latencies are percentiles of every
sample of every round (after warm-up). The corpus, a 500-instance study and the multi-frame
instance are generated once and cached under ``bench/.work/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import json
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import openjpeg
import pydicom
from corpus import (
    Study,
    big_study,
    small_study,
    warm_cache,
)
from harness import (
    ACCEPT_JSON,
    MB,
    RESULTS,
    ROOT,
    WORK,
    ResourceSampler,
    connect_grpc,
    connect_http,
    dicomrpc_server,
    ensure_orthanc,
    free_port,
    load_dicomrpc,
    load_orthanc,
    machine,
    orthanc_server,
    orthanc_version,
    profile_tables,
    run_workers,
    start_py_spy,
    stop_py_spy,
    write_section,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pydicom.valuerep import VR

from dicomrpc import Client

SECTION = "## Retrieve"

MULTIFRAME_VERSION = 1
MULTIFRAME_J2K_VERSION = 1
FRAMES = 1000
FRAME_ROWS = FRAME_COLUMNS = 256
MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NATIVE = str(ExplicitVRLittleEndian)
J2K = str(JPEG2000Lossless)
ACCEPT_DICOM_J2K = f'multipart/related; type="application/dicom"; transfer-syntax={J2K}'
ACCEPT_FRAME_NATIVE = (
    f'multipart/related; type="application/octet-stream"; transfer-syntax={NATIVE}'
)
ACCEPT_FRAME_J2K = f'multipart/related; type="application/octet-stream"; transfer-syntax={J2K}'
READ_BUFFER = 1024 * 1024

GOAL_RETRIEVE_RATIO = 1.0
GOAL_METADATA_RATIO = 0.5
GOAL_FRAME_P50_MS = 3.0


# --------------------------------------------------------------------------------------------
# The data: a 1,000-frame instance (the studies are the corpus')
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiFrame:
    """The multi-frame instance: where it is, its UIDs, its frame size."""

    path: Path
    study: str
    series: str
    sop: str
    frames: int
    frame_bytes: int

    @property
    def frames_path(self) -> str:
        """The WADO-RS path of the instance's frames, without the frame number."""
        return f"/dicom-web/studies/{self.study}/series/{self.series}/instances/{self.sop}/frames"


def multiframe(seed: int = 99) -> MultiFrame:
    """A 1,000-frame native instance (256x256, 16-bit, 12 stored), generated once."""
    directory = WORK / "retrieve-multiframe"
    path = directory / "multiframe.dcm"
    marker = directory / "complete.json"
    frame_bytes = FRAME_ROWS * FRAME_COLUMNS * 2
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("version") == MULTIFRAME_VERSION and path.exists():
            return MultiFrame(path, info["study"], info["series"], info["sop"], FRAMES, frame_bytes)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(f"generating a {FRAMES}-frame instance in {directory} ...", flush=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(FRAMES, FRAME_ROWS, FRAME_COLUMNS), dtype=np.uint16)
    pixels[:, 0, 0] = np.arange(1, FRAMES + 1)  # each frame carries its number in pixel (0, 0)
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MULTIFRAME_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MULTIFRAME_SOP_CLASS
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "FRAMES^MANY"
    ds.PatientID = "PATMF0001"
    ds.StudyDate = ds.ContentDate = "20240301"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "ACCMF1"
    ds.StudyID = "MF1"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = FRAMES
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = "40"
    ds.Rows = FRAME_ROWS
    ds.Columns = FRAME_COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    info = {
        "version": MULTIFRAME_VERSION,
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "sop": sop,
    }
    marker.write_text(json.dumps(info))
    return MultiFrame(path, info["study"], info["series"], sop, FRAMES, frame_bytes)


def _frame_options(ds: Dataset) -> dict[str, object]:
    """The keyword arguments pydicom's encoders take to describe one frame of ``ds``."""
    return {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "samples_per_pixel": int(ds.SamplesPerPixel),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.PixelRepresentation),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
    }


def multiframe_j2k(mf: MultiFrame) -> MultiFrame:
    """The native multi-frame instance as JPEG 2000 lossless (a new SOP Instance UID, same
    series), encoded frame by frame with pylibjpeg-openjpeg and generated once."""
    path = mf.path.parent / "multiframe-j2k.dcm"
    marker = mf.path.parent / "j2k-complete.json"
    expected = {"version": MULTIFRAME_J2K_VERSION, "source": mf.sop}
    if marker.exists() and path.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in expected} == expected:
            return MultiFrame(path, mf.study, mf.series, info["sop"], mf.frames, mf.frame_bytes)
    print(f"encoding the {mf.frames}-frame instance as JPEG 2000 lossless ...", flush=True)
    started = time.perf_counter()
    ds = pydicom.dcmread(mf.path)
    pixels = ds.pixel_array
    options = _frame_options(ds)
    encoder = get_encoder(JPEG2000Lossless)
    frames = [
        bytes(encoder.encode(frame, encoding_plugin="pylibjpeg", **options)) for frame in pixels
    ]
    sop = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.InstanceNumber = 2
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = VR.OB
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    marker.write_text(json.dumps({**expected, "sop": sop}))
    print(f"encoded in {time.perf_counter() - started:.0f} s", flush=True)
    return MultiFrame(path, mf.study, mf.series, sop, mf.frames, mf.frame_bytes)


def encapsulated_frames(mf: MultiFrame) -> list[bytes]:
    """The stored bitstream of every frame of an encapsulated instance."""
    ds = pydicom.dcmread(mf.path)
    return list(generate_frames(ds.PixelData, number_of_frames=mf.frames))


def decode_j2k(data: bytes, options: dict[str, object]) -> bytes:
    """One JPEG 2000 frame decoded (pylibjpeg-openjpeg) to native little endian bytes of
    Bits Allocated ``options["bits_allocated"]``."""
    arr = openjpeg.decode(data)
    kind = "i" if options["pixel_representation"] else "u"
    dtype = np.dtype(f"<{kind}{int(str(options['bits_allocated'])) // 8}")
    return arr.astype(dtype, copy=False).tobytes()


# --------------------------------------------------------------------------------------------
# One request of each kind, per server
# --------------------------------------------------------------------------------------------


def grpc_study_bytes(client: Client, study: str, transfer_syntax: str = "*") -> int:
    """RetrieveStudy through the SDK (``Client.iter_instances``): the instances' bytes."""
    total = 0
    for instance in client.iter_instances(study, transfer_syntax=transfer_syntax):
        if transfer_syntax != "*" and instance.transfer_syntax_uid != transfer_syntax:
            raise RuntimeError(
                f"RetrieveStudy sent {instance.transfer_syntax_uid}, not {transfer_syntax}"
            )
        total += len(instance.data)
    return total


def http_get(
    connection: http.client.HTTPConnection, path: str, accept: str, buffer: bytearray
) -> int:
    """GET ``path`` on a keep-alive connection; the body bytes, counted as they stream."""
    connection.request("GET", path, headers={"Accept": accept})
    response = connection.getresponse()
    total = 0
    view = memoryview(buffer)
    while count := response.readinto(view):
        total += count
    if response.status != 200:
        raise RuntimeError(f"GET {path} returned {response.status}")
    return total


class HttpStatusError(RuntimeError):
    """A GET that did not answer 200."""

    def __init__(self, path: str, status: int, body: bytes) -> None:
        super().__init__(f"GET {path} returned {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def http_body(port: int, path: str, accept: str) -> tuple[str, bytes]:
    """GET ``path`` whole: (Content-Type, body). For verification, not timed."""
    connection = connect_http(port)
    try:
        connection.request("GET", path, headers={"Accept": accept})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise HttpStatusError(path, response.status, body)
        return response.getheader("Content-Type", ""), body
    finally:
        connection.close()


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a ``multipart/related`` body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ValueError(f"no boundary in {content_type!r}")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Study retrieve MB/s of every round, and the bytes each retrieve brought."""

    rates: list[float] = field(default_factory=list)
    sizes: set[int] = field(default_factory=set)
    client_cpu_s: list[float] = field(default_factory=list)
    # The server's CPU ms (its process tree, user + system) per MiB received, by round.
    server_ms_per_mib: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


@dataclass
class Latency:
    """Seconds of every request, by round."""

    rounds: list[list[float]] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [s for r in self.rounds for s in r]

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of every sample (nearest rank), in ms."""
        ordered = sorted(self.samples)
        if not ordered:
            return 0.0
        rank = max(1, int(np.ceil(q / 100 * len(ordered))))
        return 1000 * ordered[rank - 1]

    def round_p50s_ms(self) -> list[float]:
        return [1000 * statistics.median(r) for r in self.rounds if r]

    def round_rates(self) -> list[float]:
        """Requests per second of each round (sequential requests: count / summed time)."""
        return [len(r) / sum(r) for r in self.rounds if r]

    @property
    def median_rate(self) -> float:
        rates = self.round_rates()
        return statistics.median(rates) if rates else 0.0


@dataclass
class Retrieves:
    """Study retrieves, one client, sequential: (bytes, seconds) of each, by round."""

    rounds: list[list[tuple[int, float]]] = field(default_factory=list)

    def round_rates(self, instances: int) -> list[tuple[float, float]]:
        """(MB/s, instances/s) of each round."""
        out = []
        for r in self.rounds:
            wall = sum(t for _, t in r)
            out.append((sum(b for b, _ in r) / MB / wall, len(r) * instances / wall))
        return out

    @property
    def sizes(self) -> set[int]:
        return {b for r in self.rounds for b, _ in r}


def throughput_run(
    clients: int,
    repeats: int,
    connect: Callable[[], object],
    fetch: Callable[[object], int],
    close: Callable[[object], None],
    result: Throughput,
) -> int:
    """``clients`` concurrent clients each retrieve the study ``repeats`` times; record MB/s.

    Returns the bytes received.
    """
    sizes: list[int] = []
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def work(connection: object) -> None:
        start = time.perf_counter()
        got = [fetch(connection) for _ in range(repeats)]
        end = time.perf_counter()
        with lock:
            sizes.extend(got)
            spans.append((start, end))

    # Timed from the first request to the last byte: not connecting, nor closing (closing a
    # gRPC channel was seen to take longer than a whole 50 MB retrieve).
    _, cpu = run_workers(clients, connect, work, close)
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    result.rates.append(sum(sizes) / MB / wall)
    result.sizes.update(sizes)
    result.client_cpu_s.append(cpu)
    return sum(sizes)


def latency_run(count: int, request: Callable[[], None], result: Latency) -> None:
    """Time ``count`` sequential requests, as one round."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        request()
        samples.append(time.perf_counter() - start)
    result.rounds.append(samples)


@dataclass
class StudyPath:
    """One way of retrieving a whole study: a client per thread, and one retrieve."""

    name: str
    connect: Callable[[], object]
    close: Callable[[object], None]
    # (client, study UID) -> the instances' bytes received
    study_bytes: Callable[[object, str], int]


@dataclass
class Server:
    """What the rounds need of one server: how to connect and one function per request.

    ``study_paths`` are the ways its study retrieve is measured, the first the headline one
    (dicomrpc: the SDK as a user gets it).
    """

    name: str
    pid: int
    connect: Callable[[], object]
    close: Callable[[object], None]
    study_bytes: Callable[[object, str], int]
    study_paths: list[StudyPath]
    # (connection, study UID) -> None
    metadata: Callable[[object, str], None]
    # (connection, frame number) -> the frame's size in bytes
    frame: Callable[[object, int], int]
    # the same, the JPEG 2000 instance's stored bitstream
    j2k_frame: Callable[[object, int], int]
    # the same, transcoded: JPEG 2000 instance -> native; native instance -> JPEG 2000 lossless
    decode_frame: Callable[[object, int], int] | None
    encode_frame: Callable[[object, int], int] | None
    # (connection, study UID) -> the bytes of the study transcoded to JPEG 2000 lossless
    study_j2k: Callable[[object, str], int] | None


SDK_PATH = "SDK (default: HTTP pull)"
ORTHANC_PATH = "WADO-RS"
GRPC_PATH = "SDK, gRPC only"
GATEWAY_PATH = "gateway WADO-RS"


def dicomrpc_side(target: str, pid: int, http_port: int, mf: MultiFrame, j2k: MultiFrame) -> Server:
    """Requests to dicomrpc, through the SDK; study retrieves also over gRPC alone and from
    the DICOMweb gateway as any HTTP client reads it (``http_port``)."""
    buffers: dict[int, bytearray] = {}

    def gateway_study(connection: object, study: str) -> int:
        assert isinstance(connection, http.client.HTTPConnection)
        buffer = buffers.setdefault(threading.get_ident(), bytearray(READ_BUFFER))
        return http_get(connection, f"/dicomweb/studies/{study}", ACCEPT_DICOM, buffer)

    def close(client: object) -> None:
        client.close()  # type: ignore[attr-defined]

    def study_bytes(client: object, study: str) -> int:
        assert isinstance(client, Client)
        return grpc_study_bytes(client, study)

    def metadata(client: object, study: str) -> None:
        assert isinstance(client, Client)
        client.metadata(study)

    def frame_of(instance: MultiFrame, syntax: str) -> Callable[[object, int], int]:
        def frame(client: object, number: int) -> int:
            assert isinstance(client, Client)
            (got,) = client.frames(
                instance.study, instance.series, instance.sop, [number], transfer_syntax=syntax
            )
            if syntax != "*" and got.transfer_syntax_uid != syntax:
                raise RuntimeError(f"frame sent in {got.transfer_syntax_uid}, not {syntax}")
            return len(got.data)

        return frame

    def study_j2k(client: object, study: str) -> int:
        assert isinstance(client, Client)
        return grpc_study_bytes(client, study, J2K)

    return Server(
        "dicomrpc",
        pid,
        lambda: connect_grpc(target),
        close,
        study_bytes,
        [
            StudyPath(
                SDK_PATH, lambda: connect_grpc(target, http_retrieve=True), close, study_bytes
            ),
            StudyPath(GRPC_PATH, lambda: connect_grpc(target), close, study_bytes),
            StudyPath(GATEWAY_PATH, lambda: connect_http(http_port), close, gateway_study),
        ],
        metadata,
        frame_of(mf, "*"),
        frame_of(j2k, "*"),
        frame_of(j2k, NATIVE),
        frame_of(mf, J2K),
        study_j2k,
    )


def orthanc_side(
    port: int, pid: int, mf: MultiFrame, j2k: MultiFrame, unsupported: dict[str, str]
) -> Server:
    """Requests to Orthanc's WADO-RS, one keep-alive connection per client; the kinds in
    ``unsupported`` (found so by ``probe_orthanc``) are left out."""
    buffers: dict[int, bytearray] = {}

    def buffer() -> bytearray:
        return buffers.setdefault(threading.get_ident(), bytearray(READ_BUFFER))

    def study_bytes(connection: object, study: str) -> int:
        assert isinstance(connection, http.client.HTTPConnection)
        return http_get(connection, f"/dicom-web/studies/{study}", ACCEPT_DICOM, buffer())

    def metadata(connection: object, study: str) -> None:
        assert isinstance(connection, http.client.HTTPConnection)
        http_get(connection, f"/dicom-web/studies/{study}/metadata", ACCEPT_JSON, buffer())

    def frame_of(instance: MultiFrame, accept: str) -> Callable[[object, int], int]:
        def frame(connection: object, number: int) -> int:
            assert isinstance(connection, http.client.HTTPConnection)
            return http_get(connection, f"{instance.frames_path}/{number}", accept, buffer())

        return frame

    def study_j2k(connection: object, study: str) -> int:
        assert isinstance(connection, http.client.HTTPConnection)
        return http_get(connection, f"/dicom-web/studies/{study}", ACCEPT_DICOM_J2K, buffer())

    def close(connection: object) -> None:
        connection.close()  # type: ignore[attr-defined]

    return Server(
        "Orthanc",
        pid,
        lambda: connect_http(port),
        close,
        study_bytes,
        [StudyPath(ORTHANC_PATH, lambda: connect_http(port), close, study_bytes)],
        metadata,
        frame_of(mf, ACCEPT_FRAME),
        frame_of(j2k, ACCEPT_FRAME),
        None if "decode" in unsupported else frame_of(j2k, ACCEPT_FRAME_NATIVE),
        None if "encode" in unsupported else frame_of(mf, ACCEPT_FRAME_J2K),
        None if "study_j2k" in unsupported else study_j2k,
    )


@dataclass
class Measured:
    """Everything measured of one server."""

    # (study path, clients) -> the rounds' figures
    retrieve: dict[tuple[str, int], Throughput] = field(default_factory=dict)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)
    metadata: dict[str, Latency] = field(default_factory=dict)
    frames: Latency = field(default_factory=Latency)
    frame_sizes: set[int] = field(default_factory=set)
    j2k_frames: Latency = field(default_factory=Latency)
    j2k_frame_sizes: set[int] = field(default_factory=set)
    decode: Latency = field(default_factory=Latency)
    encode: Latency = field(default_factory=Latency)
    transcoded_sizes: dict[str, set[int]] = field(default_factory=dict)
    study_j2k: Retrieves = field(default_factory=Retrieves)


def measure_round(
    server: Server,
    out: Measured,
    study: Study,
    metadata_studies: list[Study],
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    """One round of every measurement on one server."""
    for path in server.study_paths:
        for clients in args.clients:
            result = out.retrieve.setdefault((path.name, clients), Throughput())
            with ResourceSampler(server.pid) as sampler:
                received = throughput_run(
                    clients,
                    args.study_repeats,
                    path.connect,
                    lambda c, p=path: p.study_bytes(c, study.uid),  # type: ignore[misc]
                    path.close,
                    result,
                )
            result.server_ms_per_mib.append(1000 * sampler.cpu_seconds / (received / MB))
            out.peak_rss_mb[clients] = max(out.peak_rss_mb.get(clients, 0.0), sampler.peak_rss / MB)
    connection = server.connect()
    try:
        for meta_study in metadata_studies:
            latency_run(
                args.metadata_reps // args.rounds,
                lambda s=meta_study: server.metadata(connection, s.uid),  # type: ignore[misc]
                out.metadata.setdefault(meta_study.label, Latency()),
            )
        frame_runs: list[tuple[Callable[[object, int], int] | None, Latency, set[int], int]] = [
            (server.frame, out.frames, out.frame_sizes, args.frame_reps),
            (server.j2k_frame, out.j2k_frames, out.j2k_frame_sizes, args.frame_reps),
            (
                server.decode_frame,
                out.decode,
                out.transcoded_sizes.setdefault("decode", set()),
                args.transcode_reps,
            ),
            (
                server.encode_frame,
                out.encode,
                out.transcoded_sizes.setdefault("encode", set()),
                args.transcode_reps,
            ),
        ]
        for request, latency, sizes, reps in frame_runs:
            if request is None:
                continue
            count = max(1, reps // args.rounds)
            numbers = iter([rng.randint(1, FRAMES) for _ in range(count)])
            latency_run(
                count,
                lambda r=request, s=sizes, n=numbers: s.add(r(connection, next(n))),  # type: ignore[misc]
                latency,
            )
        if server.study_j2k is not None:
            retrieves = []
            for _ in range(args.transcode_study_repeats):
                started = time.perf_counter()
                size = server.study_j2k(connection, study.uid)
                retrieves.append((size, time.perf_counter() - started))
            out.study_j2k.rounds.append(retrieves)
    finally:
        server.close(connection)


def warm_up(server: Server, study: Study, metadata_studies: list[Study]) -> None:
    """A few requests of each kind, not recorded."""
    connection = server.connect()
    try:
        server.study_bytes(connection, study.uid)
        for meta_study in metadata_studies:
            for _ in range(3):
                server.metadata(connection, meta_study.uid)
        for number in random.Random(1).sample(range(1, FRAMES + 1), 10):
            server.frame(connection, number)
            server.j2k_frame(connection, number)
        for request in (server.decode_frame, server.encode_frame):
            for number in random.Random(2).sample(range(1, FRAMES + 1), 3):
                if request is not None:
                    request(connection, number)
    finally:
        server.close(connection)


# --------------------------------------------------------------------------------------------
# Verification (not timed)
# --------------------------------------------------------------------------------------------


def verify_dicomrpc(
    target: str, studies: list[Study], mf: MultiFrame, j2k: MultiFrame
) -> list[str]:
    """Compare what dicomrpc returns with the files stored; the problems found."""
    problems = []
    native_ds = pydicom.dcmread(mf.path)
    options = _frame_options(native_ds)
    stored_j2k = encapsulated_frames(j2k)
    with connect_grpc(target) as client:
        for study in studies:
            sizes = {p.stat().st_size for p in study.files}
            got = client.retrieve_study(study.uid)
            if len(got) != len(study.files) or {len(i.data) for i in got} - sizes:
                problems.append(f"dicomrpc retrieve of the {study.label} study: sizes differ")
            meta = client.metadata(study.uid)
            if len(meta.datasets) != len(study.files):
                problems.append(
                    f"dicomrpc metadata of the {study.label} study: {len(meta.datasets)} "
                    f"datasets for {len(study.files)} instances"
                )
        pixels = native_ds.PixelData
        for number in (1, 2, 500, FRAMES):
            (frame,) = client.frames(mf.study, mf.series, mf.sop, [number])
            start = (number - 1) * mf.frame_bytes
            native = pixels[start : start + mf.frame_bytes]
            if frame.data != native:
                problems.append(f"dicomrpc frame {number}: bytes differ from the stored frame")
            (frame,) = client.frames(j2k.study, j2k.series, j2k.sop, [number])
            if frame.data.rstrip(b"\0") != stored_j2k[number - 1].rstrip(b"\0"):
                problems.append(f"dicomrpc J2K frame {number}: differs from the stored bitstream")
            (frame,) = client.frames(
                j2k.study, j2k.series, j2k.sop, [number], transfer_syntax=NATIVE
            )
            if frame.transfer_syntax_uid != NATIVE or frame.data != native:
                problems.append(f"dicomrpc J2K frame {number} decoded: differs from the native")
            (frame,) = client.frames(mf.study, mf.series, mf.sop, [number], transfer_syntax=J2K)
            if frame.transfer_syntax_uid != J2K or decode_j2k(frame.data, options) != native:
                problems.append(f"dicomrpc frame {number} as J2K: does not decode to the native")
        study = studies[0]
        got = client.retrieve_study(study.uid, transfer_syntax=J2K)
        syntaxes = {i.transfer_syntax_uid for i in got}
        if len(got) != len(study.files) or syntaxes != {J2K}:
            problems.append(
                f"dicomrpc retrieve of the {study.label} study as J2K: {len(got)} instances "
                f"in {sorted(syntaxes)}"
            )
        else:
            original = {
                str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in study.files[:3])
            }
            for instance in got:
                if instance.sop_instance_uid in original:
                    ds = pydicom.dcmread(io.BytesIO(instance.data))
                    before = original[instance.sop_instance_uid]
                    if not np.array_equal(ds.pixel_array, before.pixel_array):
                        problems.append(
                            f"dicomrpc study as J2K: {instance.sop_instance_uid} pixels differ"
                        )
    return problems


def probe_orthanc(
    port: int, study: Study, mf: MultiFrame, j2k: MultiFrame
) -> tuple[dict[str, str], list[str]]:
    """Ask Orthanc once for each transcoding, checking the answer (not timed).

    Returns the kinds it does not support (``decode``, ``encode``, ``study_j2k``), each with
    why, and the problems seen (answers that claim success but are wrong).
    """
    unsupported: dict[str, str] = {}
    refusals: dict[str, str] = {}
    problems: list[str] = []
    native_ds = pydicom.dcmread(mf.path)
    options = _frame_options(native_ds)
    native = native_ds.PixelData[: mf.frame_bytes]

    def get(kind: str, path: str, accept: str) -> tuple[str, list[bytes]] | None:
        try:
            content_type, body = http_body(port, path, accept)
        except HttpStatusError as exc:
            unsupported[kind] = f"HTTP {exc.status}"
            refusals[kind] = _orthanc_error(exc.body)
            return None
        return content_type, multipart_parts(content_type, body)

    if answer := get("decode", f"{j2k.frames_path}/1", ACCEPT_FRAME_NATIVE):
        content_type, parts = answer
        if len(parts) != 1 or parts[0] != native:
            unsupported["decode"] = (
                f"answered 200 with {sum(map(len, parts))} bytes that are not the decoded "
                f"frame ({content_type})"
            )
    if answer := get("encode", f"{mf.frames_path}/1", ACCEPT_FRAME_J2K):
        content_type, parts = answer
        try:
            ok = len(parts) == 1 and decode_j2k(parts[0], options) == native
        except Exception:
            ok = False
        if not ok:
            unsupported["encode"] = (
                f"answered 200 with {sum(map(len, parts))} bytes that are not a JPEG 2000 "
                f"frame ({content_type})"
            )
    if answer := get("study_j2k", f"/dicom-web/studies/{study.uid}", ACCEPT_DICOM_J2K):
        _, parts = answer
        syntaxes = Counter(
            str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in parts
        )
        if syntaxes != Counter({J2K: len(study.files)}):
            unsupported["study_j2k"] = f"answered 200 with instances in {dict(syntaxes)}"
        else:
            ds = pydicom.dcmread(io.BytesIO(parts[0]))
            before = next(
                pydicom.dcmread(f)
                for f in study.files
                if str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                == str(ds.SOPInstanceUID)
            )
            if not np.array_equal(ds.pixel_array, before.pixel_array):
                problems.append("Orthanc study as J2K: pixels differ from the stored ones")
    return unsupported, refusals, problems


def _orthanc_error(body: bytes) -> str:
    """Orthanc's own words in an error answer: its JSON ``Message`` and ``Details``."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace").strip()
    if not isinstance(answer, dict):
        return str(answer)[:200]
    return "; ".join(str(answer[k]) for k in ("Message", "Details") if answer.get(k))


def verify_orthanc(port: int, studies: list[Study], mf: MultiFrame, j2k: MultiFrame) -> list[str]:
    """Compare what Orthanc's WADO-RS returns with the files stored; the problems found."""
    problems = []
    stored_j2k = encapsulated_frames(j2k)
    for study in studies:
        content_type, body = http_body(port, f"/dicom-web/studies/{study.uid}", ACCEPT_DICOM)
        parts = multipart_parts(content_type, body)
        if sorted(map(len, parts)) != sorted(p.stat().st_size for p in study.files):
            problems.append(f"Orthanc retrieve of the {study.label} study: sizes differ")
        _, body = http_body(port, f"/dicom-web/studies/{study.uid}/metadata", ACCEPT_JSON)
        if len(json.loads(body)) != len(study.files):
            problems.append(f"Orthanc metadata of the {study.label} study: wrong count")
    pixels = pydicom.dcmread(mf.path).PixelData
    for number in (1, 2, 500, FRAMES):
        content_type, body = http_body(port, f"{mf.frames_path}/{number}", ACCEPT_FRAME)
        (frame,) = multipart_parts(content_type, body)
        start = (number - 1) * mf.frame_bytes
        if frame != pixels[start : start + mf.frame_bytes]:
            problems.append(f"Orthanc frame {number}: bytes differ from the stored frame")
        content_type, body = http_body(port, f"{j2k.frames_path}/{number}", ACCEPT_FRAME)
        (frame,) = multipart_parts(content_type, body)
        if frame.rstrip(b"\0") != stored_j2k[number - 1].rstrip(b"\0"):
            problems.append(f"Orthanc J2K frame {number}: differs from the stored bitstream")
    return problems


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _ratio(ours: float, theirs: float) -> str:
    if not theirs:
        return "—"
    ratio = ours / theirs
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x (1/{1 / ratio:.0f})"


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def latency_rows(label: str, ours: Latency, theirs: Latency | None) -> list[str]:
    """The p50 (with the per-round p50s) and p95 rows of one latency measurement."""
    rows = []
    for q in (50, 95):
        mine, their = ours.percentile_ms(q), theirs.percentile_ms(q) if theirs else 0.0
        spreads = [
            ", ".join(f"{v:.1f}" for v in lat.round_p50s_ms()) if lat and q == 50 else ""
            for lat in (ours, theirs)
        ]
        rows.append(
            f"| {label}, p{q} ms | {mine:.1f} | {spreads[0]} | {their:.1f} | {spreads[1]} "
            f"| {_ratio(mine, their)} |"
        )
    return rows


def _cell(value: float, unsupported: str | None, digits: int = 1) -> str:
    return f"not supported ({unsupported})" if unsupported else f"{value:.{digits}f}"


def transcode_rows(
    label: str, ours: Latency, theirs: Latency | None, unsupported: str | None
) -> list[str]:
    """The frames/s (per-round rates) and p50 rows of one transcoded-frame measurement."""
    measured = theirs is not None and not unsupported and theirs.rounds
    mine_rate = ours.median_rate
    their_rate = theirs.median_rate if measured and theirs else 0.0
    mine_p50 = ours.percentile_ms(50)
    their_p50 = theirs.percentile_ms(50) if measured and theirs else 0.0
    return [
        f"| {label}, frames/s (1 client) | {mine_rate:.1f} "
        f"| {', '.join(f'{r:.1f}' for r in ours.round_rates())} "
        f"| {_cell(their_rate, unsupported) if theirs else '—'} "
        f"| {', '.join(f'{r:.1f}' for r in theirs.round_rates()) if measured and theirs else ''} "
        f"| {_ratio(mine_rate, their_rate)} |",
        f"| {label}, p50 ms | {mine_p50:.1f} "
        f"| {', '.join(f'{v:.1f}' for v in ours.round_p50s_ms())} "
        f"| {_cell(their_p50, unsupported) if theirs else '—'} "
        f"| {', '.join(f'{v:.1f}' for v in theirs.round_p50s_ms()) if measured and theirs else ''} "
        f"| {_ratio(mine_p50, their_p50)} |",
    ]


def study_j2k_rows(
    ours: Retrieves, theirs: Retrieves | None, instances: int, unsupported: str | None
) -> list[str]:
    """MB/s and instances/s of the study retrieve transcoded to JPEG 2000 lossless."""
    rows = []
    mine_rounds = ours.round_rates(instances)
    their_rounds = theirs.round_rates(instances) if theirs and not unsupported else []
    for index, unit, digits in ((0, "MB/s out", 1), (1, "instances/s", 1)):
        mine = statistics.median(r[index] for r in mine_rounds) if mine_rounds else 0.0
        their = statistics.median(r[index] for r in their_rounds) if their_rounds else 0.0
        rows.append(
            f"| study retrieve as JPEG 2000 lossless, 1 client, {unit} | {mine:.{digits}f} "
            f"| {', '.join(f'{r[index]:.{digits}f}' for r in mine_rounds)} "
            f"| {_cell(their, unsupported, digits) if theirs else '—'} "
            f"| {', '.join(f'{r[index]:.{digits}f}' for r in their_rounds)} "
            f"| {_ratio(mine, their)} |"
        )
    return rows


def report(
    results: dict[str, Measured],
    study: Study,
    metadata_studies: list[Study],
    mf: MultiFrame,
    j2k: MultiFrame,
    args: argparse.Namespace,
    problems: list[str],
    orthanc_missing: str | None,
    unsupported: dict[str, str],
    refusals: dict[str, str],
) -> str:
    """The ``## Retrieve`` section."""
    ours = results["dicomrpc"]
    theirs = results.get("Orthanc")
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = (
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"pydicom {pydicom.__version__}"
        + ("" if orthanc_missing else f", {orthanc_version()} with DICOMweb plugin")
    )

    lines = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/retrieve.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}{' (quick run)' if args.quick else ''}",
        f"- Machine: {machine()}; {platform.platform()}",
        f"- Software: {versions}",
        f"- Data, in both servers: a {len(study.files)}-instance CT study "
        f"({study.total_bytes / MB:.1f} MB, 512x512 16-bit explicit VR LE, from the ingest "
        f"corpus); a {len(metadata_studies[-1].files)}-instance study of the same kind; a "
        f"{mf.frames}-frame native instance ({FRAME_ROWS}x{FRAME_COLUMNS}, 16-bit, "
        f"{mf.path.stat().st_size / MB:.0f} MB, Multi-frame Grayscale Word SC, 12 bits of "
        f"noise per pixel) and its JPEG 2000 lossless copy ({j2k.path.stat().st_size / MB:.0f} "
        "MB, one fragment per frame, encoded by pylibjpeg-openjpeg; same series, another SOP "
        "Instance UID).",
        "- dicomrpc: study retrieve three ways: through the SDK as a user gets it, "
        "`Client.iter_instances(study)` (its default `http_retrieve=True`: one "
        "`GetRetrieveUrl` call, then the WADO-RS body of the grant's URL read by "
        "`dicomrpc.http_pull`), the same with `http_retrieve=False` (gRPC `RetrieveStudy`, "
        "transfer syntax `*`, 1 MiB chunks), each instance joined in memory and dropped; and "
        "the gateway's WADO-RS read as Orthanc's is (one keep-alive `http.client` connection "
        "per client, the body read into a reused 1 MiB buffer, not parsed; its byte count "
        "includes the multipart framing). The server CPU per MiB is the server process "
        "tree's user + system time over the MiB of instances received. Metadata "
        "`Client.metadata(study)` "
        "(datasets parsed into protobuf messages); frames `Client.frames(..., [n])`, "
        f"transcoded ones with `transfer_syntax=` `{NATIVE}` (J2K → native) or `{J2K}` "
        "(native → J2K lossless); study retrieve as JPEG 2000 with "
        f'`iter_instances(study, transfer_syntax="{J2K}")`. One gRPC channel per client. '
        "The server runs with its default of 1 worker process, which does all decoding and "
        "encoding.",
        "- Orthanc: WADO-RS, `GET /dicom-web/studies/{uid}` (`transfer-syntax=*`), "
        "`.../metadata`, `.../frames/{n}` (`application/octet-stream`, `transfer-syntax=*`, "
        f"or `{NATIVE}` / `{J2K}` to transcode), the study with `transfer-syntax={J2K}`; "
        "bodies read into a reused 1 MiB buffer, not parsed. One keep-alive `http.client` "
        "connection per client. Default settings (DICOMweb `StudiesMetadata` default: full, "
        "read from the stored files).",
        f"- {args.rounds} rounds after warm-up, both servers up at once, measured alternately "
        "(first server alternating by round). Retrieve: each client fetches the study "
        f"{args.study_repeats} times per round; MB/s = bytes received / wall time, median of "
        f"the rounds (every round under (rounds)). Metadata: {args.metadata_reps} requests per "
        f"study; frames: {args.frame_reps} random frames of each instance; transcoded frames: "
        f"{args.transcode_reps} random frames each way, frames/s = frames / summed request "
        "time, median of the rounds; study as JPEG 2000: "
        f"{args.transcode_study_repeats} retrieve(s) per round. Percentiles over all requests "
        "(per-round p50s under (rounds)). Sequential requests on one connection. Every "
        "transcoding was checked once before the rounds (decoded pixels equal to the "
        "stored ones); an Orthanc answer that fails the check or is refused is reported "
        '"not supported".',
        "- MB = 2^20 bytes. Peak RSS: the server's process tree, sampled every 50 ms during "
        "the retrieve runs. Clients (Python threads) and servers share the machine's 2 CPUs.",
        "",
        "| measurement | dicomrpc | (rounds) | Orthanc | (rounds) | dicomrpc / Orthanc |",
        "|---|--:|--|--:|--|--:|",
    ]
    for path in (SDK_PATH, GRPC_PATH, GATEWAY_PATH):
        for clients in args.clients:
            mine = ours.retrieve[path, clients]
            their = theirs.retrieve[ORTHANC_PATH, clients] if theirs else None
            lines.append(
                f"| study retrieve, {path}, {clients} client{'s' * (clients > 1)}, MB/s "
                f"| {mine.median:.0f} | {', '.join(f'{r:.0f}' for r in mine.rates)} "
                f"| {their.median if their else 0:.0f} "
                f"| {', '.join(f'{r:.0f}' for r in their.rates) if their else '—'} "
                f"| {_ratio(mine.median, their.median) if their else '—'} |"
            )
    for path in (SDK_PATH, GRPC_PATH, GATEWAY_PATH):
        mine_ms = ours.retrieve[path, max(args.clients)].server_ms_per_mib
        their_ms = (
            theirs.retrieve[ORTHANC_PATH, max(args.clients)].server_ms_per_mib if theirs else []
        )
        cpu_ratio = (
            _ratio(statistics.median(mine_ms), statistics.median(their_ms)) if their_ms else "—"
        )
        lines.append(
            f"| server CPU ms per MiB sent, {path}, {max(args.clients)} clients "
            f"| {statistics.median(mine_ms):.2f} | {', '.join(f'{r:.2f}' for r in mine_ms)} "
            f"| {statistics.median(their_ms) if their_ms else 0:.2f} "
            f"| {', '.join(f'{r:.2f}' for r in their_ms) if their_ms else '—'} "
            f"| {cpu_ratio} |"
        )
    rows: list[tuple[str, Latency, Latency | None]] = [
        (f"study metadata, {s.label}", ours.metadata[s.label], theirs and theirs.metadata[s.label])
        for s in metadata_studies
    ]
    rows.append(("one native frame (256x256x16)", ours.frames, theirs and theirs.frames))
    rows.append(("one JPEG 2000 frame, as stored", ours.j2k_frames, theirs and theirs.j2k_frames))
    for label, mine_l, their_l in rows:
        lines += latency_rows(label, mine_l, their_l)
    lines += transcode_rows(
        "one frame J2K → native (decode)",
        ours.decode,
        theirs and theirs.decode,
        unsupported.get("decode"),
    )
    lines += transcode_rows(
        "one frame native → J2K lossless (encode)",
        ours.encode,
        theirs and theirs.encode,
        unsupported.get("encode"),
    )
    lines += study_j2k_rows(
        ours.study_j2k,
        theirs and theirs.study_j2k,
        len(study.files),
        unsupported.get("study_j2k"),
    )
    lines += [
        f"| server peak RSS MB, {clients}-client retrieve | {ours.peak_rss_mb[clients]:.0f} "
        f"| | {theirs.peak_rss_mb[clients] if theirs else 0:.0f} | | |"
        for clients in args.clients
    ]
    cpu = {
        f"{name}, {path}": statistics.median(t.client_cpu_s)
        for name, m in results.items()
        for (path, clients), t in m.retrieve.items()
        if clients == max(args.clients)
    }
    lines += [
        "",
        f"Client CPU s per {max(args.clients)}-client retrieve round (median): "
        + ", ".join(f"{n} {c:.2f}" for n, c in cpu.items())
        + ".",
        "",
        "Goals: study retrieve through the SDK and from the gateway ≥ Orthanc's MB/s; study "
        "metadata p50 ≤ half of Orthanc's; one native frame p50 < "
        f"{GOAL_FRAME_P50_MS:.0f} ms. The SDK over gRPC alone has no goal of its own: it is "
        "what a client gets that asks for one connection (`http_retrieve=False`).",
        "",
    ]
    if theirs:
        for path in (SDK_PATH, GATEWAY_PATH, GRPC_PATH):
            for clients in args.clients:
                ratio = (
                    ours.retrieve[path, clients].median
                    / theirs.retrieve[ORTHANC_PATH, clients].median
                )
                verdict = (
                    "no goal"
                    if path == GRPC_PATH
                    else f"goal ≥ {GOAL_RETRIEVE_RATIO:.0f}x: "
                    + _verdict(ratio >= GOAL_RETRIEVE_RATIO)
                )
                lines.append(
                    f"- **Study retrieve, {path}, {clients} client(s): {ratio:.2f}x Orthanc's "
                    f"MB/s** — {verdict}."
                )
        for s in metadata_studies:
            ratio = ours.metadata[s.label].percentile_ms(50) / theirs.metadata[
                s.label
            ].percentile_ms(50)
            lines.append(
                f"- **Study metadata, {s.label}: p50 {ratio:.2f}x Orthanc's** — goal "
                f"≤ {GOAL_METADATA_RATIO}x: {_verdict(ratio <= GOAL_METADATA_RATIO)}."
            )
    else:
        lines.append(f"- Ratios: not measured, Orthanc unavailable ({orthanc_missing}).")
    p50 = ours.frames.percentile_ms(50)
    lines.append(
        f"- **One native frame: p50 {p50:.2f} ms** — goal < {GOAL_FRAME_P50_MS:.0f} ms: "
        f"{_verdict(p50 < GOAL_FRAME_P50_MS)}."
    )
    sizes = {
        f"{name}, {path}": sorted(t.sizes)
        for name, m in results.items()
        for (path, clients), t in m.retrieve.items()
        if clients == 1
    }
    frame_sizes = {name: sorted(m.frame_sizes) for name, m in results.items()}
    lines += [
        "",
        f"Verified: the stored files total {study.total_bytes} bytes; bytes per study retrieve "
        + "; ".join(f"{n}: {', '.join(map(str, s))}" for n, s in sizes.items())
        + " (Orthanc's count includes the multipart framing); frame sizes "
        + "; ".join(f"{n}: {', '.join(map(str, s))}" for n, s in frame_sizes.items())
        + f" (a frame is {mf.frame_bytes} bytes). Not timed: every instance's size, the "
        "metadata dataset counts and frames 1, 2, 500 and 1000 byte for byte against the "
        "files (the JPEG 2000 frames as stored, decoded by the server, and the native ones "
        "encoded by the server then decoded here), on both servers; the study as JPEG 2000: "
        "every instance's transfer syntax, and the first instances' pixels — "
        + ("no differences." if not problems else "differences, see below."),
    ]
    if unsupported:
        what = {
            "decode": f"frame of the JPEG 2000 instance as `{NATIVE}`",
            "encode": f"frame of the native instance as `{J2K}`",
            "study_j2k": f"study as `{J2K}`",
        }
        lines += ["", "Orthanc's answers to the transcoding requests (asked once, not timed):", ""]
        lines += [
            f"- {what[kind]}: {why}" + (f' — "{refusals[kind]}"' if refusals.get(kind) else "")
            for kind, why in unsupported.items()
        ]
    if problems:
        lines += ["", "Problems seen:", "", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, few reps")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument(
        "--study-repeats", type=int, default=3, help="study retrieves per client per round (3)"
    )
    parser.add_argument(
        "--metadata-reps", type=int, default=60, help="metadata requests per study (60)"
    )
    parser.add_argument("--frame-reps", type=int, default=250, help="frame requests (250)")
    parser.add_argument(
        "--transcode-reps",
        type=int,
        default=100,
        help="transcoded frame requests, each direction (100)",
    )
    parser.add_argument(
        "--transcode-study-repeats",
        type=int,
        default=1,
        help="study retrieves transcoded to JPEG 2000 per round (1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only dicomrpc's 4-client study retrieve, under py-spy (GIL holder)",
    )
    parser.add_argument("--no-orthanc", action="store_true", help="measure dicomrpc only")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave RESULTS.md alone"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.study_repeats, args.metadata_reps, args.frame_reps = 2, 1, 10, 20
        args.transcode_reps = 10
    args.clients = [1, 4]
    return args


def profile(study: Study, args: argparse.Namespace) -> int:
    """dicomrpc's 4-client study retrieve under py-spy: the server's hot functions."""
    raw = WORK / "retrieve-profile.txt"
    run_dir = Path(tempfile.mkdtemp(prefix="retrieve-", dir=WORK))
    try:
        with dicomrpc_server(run_dir / "dicomrpc", WORK / "retrieve-dicomrpc.log") as (
            target,
            pid,
        ):
            load_dicomrpc(target, study.files)
            mf = multiframe()
            server = dicomrpc_side(target, pid, -1, mf, multiframe_j2k(mf))
            result = Throughput()
            throughput_run(
                1,
                1,
                server.connect,
                lambda c: server.study_bytes(c, study.uid),
                server.close,
                result,
            )
            spy = start_py_spy(pid, raw, gil_only=True)
            try:
                throughput_run(
                    max(args.clients),
                    args.study_repeats * 3,
                    server.connect,
                    lambda c: server.study_bytes(c, study.uid),
                    server.close,
                    result,
                )
            finally:
                stop_py_spy(spy)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{max(args.clients)} clients: {result.rates[-1]:.0f} MB/s (under py-spy)")
    print(profile_tables(raw, gil_only=True) if raw.exists() else "py-spy wrote no profile")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    study = small_study()
    if args.profile:
        return profile(study, args)
    metadata_studies = [study, big_study()]
    mf = multiframe()
    j2k = multiframe_j2k(mf)
    files = [*study.files, *metadata_studies[1].files, mf.path, j2k.path]
    print(f"data: {len(files)} files, {sum(f.stat().st_size for f in files) / MB:.0f} MB")
    orthanc_missing = "skipped (--no-orthanc)" if args.no_orthanc else ensure_orthanc()
    problems: list[str] = []
    unsupported: dict[str, str] = {}
    refusals: dict[str, str] = {}
    results: dict[str, Measured] = {}
    rng = random.Random(7)
    run_dir = Path(tempfile.mkdtemp(prefix="retrieve-", dir=WORK))
    try:
        with contextlib.ExitStack() as stack:
            http_port = free_port()
            target, pid = stack.enter_context(
                dicomrpc_server(
                    run_dir / "dicomrpc", WORK / "retrieve-dicomrpc.log", http_port=http_port
                )
            )
            servers = [dicomrpc_side(target, pid, http_port, mf, j2k)]
            started = time.perf_counter()
            load_dicomrpc(target, files)
            print(f"loaded dicomrpc in {time.perf_counter() - started:.1f} s", flush=True)
            started = time.perf_counter()
            problems += verify_dicomrpc(target, metadata_studies, mf, j2k)
            print(f"verified dicomrpc in {time.perf_counter() - started:.1f} s", flush=True)
            if orthanc_missing is None:
                (run_dir / "orthanc").mkdir()
                port, orthanc_pid = stack.enter_context(
                    orthanc_server(run_dir / "orthanc", WORK / "retrieve-orthanc.log")
                )
                started = time.perf_counter()
                load_orthanc(port, files)
                print(f"loaded Orthanc in {time.perf_counter() - started:.1f} s", flush=True)
                problems += verify_orthanc(port, metadata_studies, mf, j2k)
                started = time.perf_counter()
                unsupported, refusals, seen = probe_orthanc(port, study, mf, j2k)
                problems += seen
                print(
                    f"probed Orthanc's transcoding in {time.perf_counter() - started:.1f} s: "
                    f"not supported {unsupported or 'none'}",
                    flush=True,
                )
                servers.append(orthanc_side(port, orthanc_pid, mf, j2k, unsupported))
            warm_cache(files)
            for server in servers:
                print(f"warming up {server.name} ...", flush=True)
                warm_up(server, study, metadata_studies)
                results[server.name] = Measured()
            for number in range(args.rounds):
                order = servers if number % 2 == 0 else servers[::-1]
                for server in order:
                    started = time.perf_counter()
                    measure_round(server, results[server.name], study, metadata_studies, args, rng)
                    print(
                        f"[{number + 1}/{args.rounds}] {server.name}: "
                        f"{time.perf_counter() - started:.1f} s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    for name, measured in results.items():
        if any(size != mf.frame_bytes for size in measured.frame_sizes) and name == "dicomrpc":
            problems.append(f"dicomrpc frame sizes {sorted(measured.frame_sizes)}")
        for (path, _), figures in measured.retrieve.items():
            if name == "dicomrpc" and path != GATEWAY_PATH and figures.sizes != {study.total_bytes}:
                problems.append(f"dicomrpc study bytes, {path}: {sorted(figures.sizes)}")
        if name == "dicomrpc" and measured.transcoded_sizes["decode"] != {mf.frame_bytes}:
            problems.append(
                f"dicomrpc decoded frame sizes {sorted(measured.transcoded_sizes['decode'])}"
            )
    section = report(
        results,
        study,
        metadata_studies,
        mf,
        j2k,
        args,
        problems,
        orthanc_missing,
        unsupported,
        refusals,
    )
    print()
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
