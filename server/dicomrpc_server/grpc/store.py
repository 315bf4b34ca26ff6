"""StoreService: StoreInstances translated onto :class:`~dicomrpc_server.store.ingest.StoreCore`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.v1 import store_service_pb2_grpc
from dicomrpc_server.dicom.uids import UidCheck, check_uid
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.store.ingest import Ingest, InstanceResult, Outcome, StoreCore, StoreStream

# Instances of one stream being checked and committed while the next one streams in.
PIPELINE_DEPTH = 4

_OUTCOMES = {
    Outcome.STORED: pb.INSTANCE_STORE_OUTCOME_STORED,
    Outcome.STORED_WITH_WARNINGS: pb.INSTANCE_STORE_OUTCOME_STORED_WITH_WARNINGS,
    Outcome.FAILED: pb.INSTANCE_STORE_OUTCOME_FAILED,
}


def _result_message(result: InstanceResult) -> pb.InstanceStoreResult:
    message = pb.InstanceStoreResult(
        index=result.index,
        client_reference=result.client_reference,
        outcome=_OUTCOMES[result.outcome],
        sop_class_uid=result.sop_class_uid,
        sop_instance_uid=result.sop_uid,
        study_instance_uid=result.study_uid,
        series_instance_uid=result.series_uid,
        retrieve_location=result.retrieve_location,
        warning_reason=result.warning_reason,
        version=result.version,
        size_bytes=result.size_bytes,
        transfer_syntax_uid=result.transfer_syntax_uid,
        warnings=[
            pb.AttributeWarning(
                tag=p.tag, keyword=p.keyword, comment=p.comment, warning_reason=p.reason
            )
            for p in result.problems
        ],
    )
    if result.failure is not None:
        message.failure_reason = result.failure.dicom_status or 272
        message.failure_reason_name = result.failure.reason
        message.failure_message = result.failure.message
    return message


def overall_status(results: list[InstanceResult]) -> pb.StoreStatus.ValueType:
    """All stored, some, or none (including an empty stream)."""
    stored = sum(r.outcome is not Outcome.FAILED for r in results)
    if results and stored == len(results):
        return pb.STORE_STATUS_ALL_STORED
    return pb.STORE_STATUS_PARTIALLY_STORED if stored else pb.STORE_STATUS_NONE_STORED


class StoreServicer(store_service_pb2_grpc.StoreServiceServicer):
    """Receives instance streams; one bad instance never fails the others."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    async def StoreInstances(
        self,
        request_iterator: AsyncIterator[pb.StoreInstancesRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.StoreInstancesResponse:
        """Store every instance of the stream; answer with their results in order."""
        tasks: list[asyncio.Task[InstanceResult]] = []
        current: Ingest | None = None
        stream: StoreStream | None = None
        try:
            async for request in request_iterator:
                if stream is None:
                    restriction = request.study_instance_uid
                    verdict, why = check_uid(restriction) if restriction else (UidCheck.VALID, "")
                    if verdict is UidCheck.INVALID:
                        raise invalid_argument("study_instance_uid", f"{restriction!r} {why}")
                    stream = StoreStream(restriction)
                kind = request.WhichOneof("payload")
                if kind == "instance":
                    if current is not None:
                        tasks.append(asyncio.create_task(current.finish()))
                    await _bound(tasks)
                    header = request.instance
                    current = self._core.begin(stream, header.client_reference, header.size_bytes)
                elif kind == "data":
                    if current is None:
                        raise ServiceError(
                            Code.INVALID_ARGUMENT,
                            "STREAM_PROTOCOL_VIOLATION",
                            "data was sent before any instance header",
                        )
                    current.write(request.data)
            if current is not None:
                tasks.append(asyncio.create_task(current.finish()))
                current = None
            results = list(await asyncio.gather(*tasks))
        except ServiceError as error:
            await _cancel(current, tasks)
            await abort(context, error)
        except BaseException:
            await _cancel(current, tasks)
            raise
        return pb.StoreInstancesResponse(
            results=[_result_message(r) for r in results], status=overall_status(results)
        )


async def _bound(tasks: list[asyncio.Task[InstanceResult]]) -> None:
    """Wait until fewer than PIPELINE_DEPTH instances of this stream are in progress."""
    running = [t for t in tasks if not t.done()]
    while len(running) >= PIPELINE_DEPTH:
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        running = [t for t in running if not t.done()]


async def _cancel(current: Ingest | None, tasks: list[asyncio.Task[InstanceResult]]) -> None:
    if current is not None:
        current.abandon()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
