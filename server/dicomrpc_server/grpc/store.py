"""StoreService: StoreInstances translated onto :class:`~dicomrpc_server.store.ingest.StoreCore`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.store.ingest import InstanceResult, Outcome, StoreCore
from dicomrpc_server.store.request import (
    StoreRequest,
    StoreStatus,
    check_study_restriction,
    overall_status,
)

# The field of StoreInstancesRequest holding instance bytes, received as memoryviews.
STORE_CHUNK_FIELD = pb.StoreInstancesRequest.DATA_FIELD_NUMBER

_OUTCOMES = {
    Outcome.STORED: pb.INSTANCE_STORE_OUTCOME_STORED,
    Outcome.STORED_WITH_WARNINGS: pb.INSTANCE_STORE_OUTCOME_STORED_WITH_WARNINGS,
    Outcome.FAILED: pb.INSTANCE_STORE_OUTCOME_FAILED,
    Outcome.ALREADY_STORED: pb.INSTANCE_STORE_OUTCOME_ALREADY_STORED,
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
        message.failure_reason = result.failure_reason
        message.failure_reason_name = result.failure.reason
        message.failure_message = result.failure.message
    return message


_STATUSES = {
    StoreStatus.ALL_STORED: pb.STORE_STATUS_ALL_STORED,
    StoreStatus.PARTIALLY_STORED: pb.STORE_STATUS_PARTIALLY_STORED,
    StoreStatus.NONE_STORED: pb.STORE_STATUS_NONE_STORED,
}


class StoreServicer:
    """Receives instance streams; one bad instance never fails the others.

    Registered by :func:`~dicomrpc_server.grpc.wire.add_chunked_servicer`: a message that is
    only a chunk of bytes arrives as a memoryview of what gRPC received, not a parsed copy.
    """

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    async def StoreInstances(
        self,
        request_iterator: AsyncIterator[pb.StoreInstancesRequest | memoryview],
        context: grpc.aio.ServicerContext,
    ) -> pb.StoreInstancesResponse:
        """Store every instance of the stream; answer with their results in order."""
        try:
            results = await self._store(request_iterator)
        except ServiceError as error:
            await abort(context, error, request_iterator)
        return pb.StoreInstancesResponse(
            results=[_result_message(r) for r in results],
            status=_STATUSES[overall_status(results)],
        )

    async def _store(
        self, requests: AsyncIterator[pb.StoreInstancesRequest | memoryview]
    ) -> list[InstanceResult]:
        """Feed the stream to one StoreRequest, which removes what it holds however it ends.

        grpc.aio ends the request iterator as if the client had finished when the call is
        cancelled, runs past its deadline or receives a message over the size limit, and
        cancels this task a moment later: the request's cleanup is what leaves nothing behind.
        """
        messages = aiter(requests)
        first = await anext(messages, None)
        if first is None:
            return []
        study = "" if isinstance(first, memoryview) else first.study_instance_uid
        check_study_restriction(study, "study_instance_uid")
        async with StoreRequest(self._core, study) as store:
            request: pb.StoreInstancesRequest | memoryview | None = first
            while request is not None:
                if isinstance(request, memoryview):  # a bare chunk (see dicomrpc.wire)
                    store.write(request)
                else:
                    kind = request.WhichOneof("payload")
                    if kind == "instance":
                        header = request.instance
                        await store.begin(header.client_reference, header.size_bytes)
                    elif kind == "data":
                        store.write(request.data)
                request = await anext(messages, None)
            return await store.finish()
