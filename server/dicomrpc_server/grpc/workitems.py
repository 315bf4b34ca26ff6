"""WorkitemService: translates the UPS RPCs to :class:`~dicomrpc_server.ups.service.WorkitemCore`.

The rules live in the core; this maps messages to calls and core errors to statuses (once,
through :func:`~dicomrpc_server.grpc.errors.abort`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc.v1 import workitem_service_pb2_grpc
from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.ups.service import WorkitemCore, WorkitemQuery, state_message
from dicomrpc_server.ups.states import State

_STATES = {
    pb.WORKITEM_STATE_SCHEDULED: State.SCHEDULED,
    pb.WORKITEM_STATE_IN_PROGRESS: State.IN_PROGRESS,
    pb.WORKITEM_STATE_COMPLETED: State.COMPLETED,
    pb.WORKITEM_STATE_CANCELED: State.CANCELED,
}


class WorkitemServicer(workitem_service_pb2_grpc.WorkitemServiceServicer):
    """The gRPC face of the workitem core."""

    def __init__(self, core: WorkitemCore) -> None:
        self._core = core

    async def CreateWorkitem(
        self, request: pb.CreateWorkitemRequest, context: Any
    ) -> pb.CreateWorkitemResponse:
        """Create a SCHEDULED workitem."""
        try:
            outcome = await self._core.create(request.dataset, request.workitem_uid)
        except ServiceError as error:
            await abort(context, error)
        return pb.CreateWorkitemResponse(
            workitem_uid=outcome.workitem_uid,
            warning_status=outcome.warning_status,
            warning_message=outcome.warning_message,
        )

    async def RetrieveWorkitem(
        self, request: pb.RetrieveWorkitemRequest, context: Any
    ) -> pb.RetrieveWorkitemResponse:
        """Return a workitem without its Transaction UID."""
        try:
            dataset, state = self._core.retrieve(request.workitem_uid)
        except ServiceError as error:
            await abort(context, error)
        return pb.RetrieveWorkitemResponse(dataset=dataset, state=state_message(state))

    async def UpdateWorkitem(
        self, request: pb.UpdateWorkitemRequest, context: Any
    ) -> pb.UpdateWorkitemResponse:
        """Set attributes of a workitem."""
        try:
            outcome = await self._core.update(
                request.workitem_uid, request.transaction_uid, request.dataset
            )
        except ServiceError as error:
            await abort(context, error)
        return pb.UpdateWorkitemResponse(
            warning_status=outcome.warning_status, warning_message=outcome.warning_message
        )

    async def ChangeWorkitemState(
        self, request: pb.ChangeWorkitemStateRequest, context: Any
    ) -> pb.ChangeWorkitemStateResponse:
        """Claim, complete or cancel a workitem."""
        try:
            requested = _STATES.get(request.state)
            if requested is None:
                raise invalid_argument("state", "is required: IN PROGRESS, COMPLETED or CANCELED")
            outcome = await self._core.change_state(
                request.workitem_uid,
                requested,
                request.transaction_uid,
                request.dataset if request.HasField("dataset") else None,
            )
        except ServiceError as error:
            await abort(context, error)
        return pb.ChangeWorkitemStateResponse(
            state=state_message(outcome.state),
            warning_status=outcome.warning_status,
            warning_message=outcome.warning_message,
        )

    async def RequestWorkitemCancellation(
        self, request: pb.RequestWorkitemCancellationRequest, context: Any
    ) -> pb.RequestWorkitemCancellationResponse:
        """Cancel a SCHEDULED workitem or ask the performer of an IN PROGRESS one to."""
        try:
            outcome = await self._core.request_cancellation(
                request.workitem_uid,
                request.reason,
                request.contact_display_name,
                request.contact_uri,
            )
        except ServiceError as error:
            await abort(context, error)
        return pb.RequestWorkitemCancellationResponse(
            state=state_message(outcome.state), warning_status=outcome.warning_status
        )

    async def SearchWorkitems(
        self, request: pb.SearchWorkitemsRequest, context: Any
    ) -> pb.SearchWorkitemsResponse:
        """Search workitems."""
        query = WorkitemQuery(
            match=dict(request.match),
            include_fields=list(request.include_fields),
            fuzzy=request.fuzzy_matching,
            limit=request.limit,
            offset=request.offset,
        )
        try:  # the page grows with the archive: off the event loop
            results = await asyncio.to_thread(self._core.search, query)
        except ServiceError as error:
            await abort(context, error)
        return pb.SearchWorkitemsResponse(results=results)

    async def SubscribeWorkitems(
        self, request: pb.SubscribeWorkitemsRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeWorkitemsResponse]:
        """Stream events, replaying those after ``since`` first."""
        try:
            since = request.since if request.HasField("since") else None
            async for event in self._core.follow(request.workitem_uid, dict(request.filter), since):
                yield event
        except ServiceError as error:
            await abort(context, error)
