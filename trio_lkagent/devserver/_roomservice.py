"""``RoomService`` and ``AgentDispatchService``: the Server API methods over Twirp.

Grants are checked as the Go server does (``pkg/service/auth.go``,
``roomservice.go``, ``agent_dispatch_service.go``): ``roomCreate`` for
``CreateRoom`` / ``DeleteRoom``, ``roomList`` for ``ListRooms``, ``roomAdmin``
on the request's room for the participant, metadata, data and dispatch methods.
A missing grant is Twirp ``unauthenticated`` "permissions denied", Go's
``twirpAuthError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import models as models_pb
from livekit.protocol import room as room_pb

from ._auth import Grants
from ._rooms import ServerRoom
from ._twirp import Method, TwirpError

if TYPE_CHECKING:
    from ._server import DevServer

__all__ = ["server_api"]

#: Go's ``ErrPermissionDenied`` text.
ERR_PERMISSIONS_DENIED = "permissions denied"
#: Go's ``ErrRoomNotFound`` / ``ErrParticipantNotFound`` texts.
ERR_ROOM_NOT_FOUND = "requested room does not exist"
ERR_PARTICIPANT_NOT_FOUND = "participant does not exist"


def _denied() -> TwirpError:
    return TwirpError("unauthenticated", ERR_PERMISSIONS_DENIED)


def ensure_create(grants: Grants | None) -> None:
    """Go's ``EnsureCreatePermission``: the ``roomCreate`` grant."""
    video = grants.claims.video if grants is not None else None
    if video is None or not video.room_create:
        raise _denied()


def ensure_list(grants: Grants | None) -> None:
    """Go's ``EnsureListPermission``: the ``roomList`` grant."""
    video = grants.claims.video if grants is not None else None
    if video is None or not video.room_list:
        raise _denied()


def ensure_admin(grants: Grants | None, room: str) -> None:
    """Go's ``EnsureAdminPermission``: ``roomAdmin`` with ``room`` equal to *room*."""
    video = grants.claims.video if grants is not None else None
    if video is None or not video.room_admin or (video.room or "") != room:
        raise _denied()


def _not_found(message: str) -> TwirpError:
    return TwirpError("not_found", message)


def _key_message(error: KeyError) -> str:
    return str(error.args[0]) if error.args else "not found"


class _Api:
    """The method handlers, bound to one dev server."""

    def __init__(self, server: DevServer) -> None:
        self._server = server

    def _room(self, name: str) -> ServerRoom:
        room = self._server.rooms.get(name)
        if room is None:
            raise _not_found(ERR_ROOM_NOT_FOUND)
        return room

    def _participant(self, room_name: str, identity: str) -> models_pb.ParticipantInfo:
        room = self._server.rooms.get(room_name)
        info = room.participants.get(identity) if room is not None else None
        if info is None:
            raise _not_found(ERR_PARTICIPANT_NOT_FOUND)
        return info

    def _render_room(self, room: ServerRoom) -> models_pb.Room:
        proto = models_pb.Room()
        proto.CopyFrom(room.room)
        proto.num_participants = sum(
            1 for p in room.participants.values() if p.kind != models_pb.ParticipantInfo.AGENT
        )
        return proto

    # -- RoomService ---------------------------------------------------------------

    async def create_room(
        self, req: room_pb.CreateRoomRequest, grants: Grants | None
    ) -> models_pb.Room:
        ensure_create(grants)
        try:
            await self._server.create_room(
                req.name,
                agents=list(req.agents),
                metadata=req.metadata,
                empty_timeout=req.empty_timeout,
                departure_timeout=req.departure_timeout,
                max_participants=req.max_participants,
            )
        except ValueError as exc:
            raise TwirpError("invalid_argument", str(exc)) from None
        return self._render_room(self._room(req.name))

    async def list_rooms(
        self, req: room_pb.ListRoomsRequest, grants: Grants | None
    ) -> room_pb.ListRoomsResponse:
        ensure_list(grants)
        names = set(req.names)
        return room_pb.ListRoomsResponse(
            rooms=[
                self._render_room(room)
                for name, room in self._server.rooms.items()
                if not names or name in names
            ]
        )

    async def delete_room(
        self, req: room_pb.DeleteRoomRequest, grants: Grants | None
    ) -> room_pb.DeleteRoomResponse:
        ensure_create(grants)
        try:
            await self._server.delete_room(req.room)
        except KeyError:
            raise _not_found("room not found") from None
        return room_pb.DeleteRoomResponse()

    async def list_participants(
        self, req: room_pb.ListParticipantsRequest, grants: Grants | None
    ) -> room_pb.ListParticipantsResponse:
        ensure_admin(grants, req.room)
        room = self._server.rooms.get(req.room)
        # Go's store answers an empty list for a room it does not know.
        participants = list(room.participants.values()) if room is not None else []
        return room_pb.ListParticipantsResponse(participants=participants)

    async def get_participant(
        self, req: room_pb.RoomParticipantIdentity, grants: Grants | None
    ) -> models_pb.ParticipantInfo:
        ensure_admin(grants, req.room)
        return self._participant(req.room, req.identity)

    async def remove_participant(
        self, req: room_pb.RoomParticipantIdentity, grants: Grants | None
    ) -> room_pb.RemoveParticipantResponse:
        # Go looks the participant up before checking the grant.
        self._participant(req.room, req.identity)
        ensure_admin(grants, req.room)
        await self._server.remove_participant(req.room, req.identity)
        return room_pb.RemoveParticipantResponse()

    async def mute_published_track(
        self, req: room_pb.MuteRoomTrackRequest, grants: Grants | None
    ) -> room_pb.MuteRoomTrackResponse:
        ensure_admin(grants, req.room)
        self._participant(req.room, req.identity)
        try:
            track = self._server.mute_track(req.room, req.identity, req.track_sid, req.muted)
        except KeyError:
            raise _not_found("track is not found") from None
        response = room_pb.MuteRoomTrackResponse()
        response.track.CopyFrom(track)
        return response

    async def update_participant(
        self, req: room_pb.UpdateParticipantRequest, grants: Grants | None
    ) -> models_pb.ParticipantInfo:
        ensure_admin(grants, req.room)
        self._participant(req.room, req.identity)
        return self._server.update_participant(
            req.room,
            req.identity,
            metadata=req.metadata,
            name=req.name,
            attributes=dict(req.attributes),
            permission=req.permission if req.HasField("permission") else None,
        )

    async def update_room_metadata(
        self, req: room_pb.UpdateRoomMetadataRequest, grants: Grants | None
    ) -> models_pb.Room:
        ensure_admin(grants, req.room)
        room = self._room(req.room)
        self._server.update_room_metadata(req.room, req.metadata)
        return self._render_room(room)

    async def send_data(
        self, req: room_pb.SendDataRequest, grants: Grants | None
    ) -> room_pb.SendDataResponse:
        ensure_admin(grants, req.room)
        self._room(req.room)
        await self._server.send_data(
            req.room,
            req.data,
            reliable=req.kind == models_pb.DataPacket.RELIABLE,
            topic=req.topic if req.HasField("topic") else None,
            destination_identities=list(req.destination_identities),
        )
        return room_pb.SendDataResponse()

    # -- AgentDispatchService ------------------------------------------------------

    async def create_dispatch(
        self, req: dispatch_pb.CreateAgentDispatchRequest, grants: Grants | None
    ) -> dispatch_pb.AgentDispatch:
        ensure_admin(grants, req.room)
        try:
            return await self._server.create_dispatch(
                req.room,
                req.agent_name,
                req.metadata,
                attributes=dict(req.attributes),
                deployment=req.deployment,
            )
        except ValueError as exc:
            raise TwirpError("invalid_argument", str(exc)) from None

    async def delete_dispatch(
        self, req: dispatch_pb.DeleteAgentDispatchRequest, grants: Grants | None
    ) -> dispatch_pb.AgentDispatch:
        ensure_admin(grants, req.room)
        try:
            return await self._server.delete_dispatch(req.dispatch_id, req.room)
        except KeyError as exc:
            raise _not_found(_key_message(exc)) from None

    async def list_dispatch(
        self, req: dispatch_pb.ListAgentDispatchRequest, grants: Grants | None
    ) -> dispatch_pb.ListAgentDispatchResponse:
        ensure_admin(grants, req.room)
        try:
            dispatches = await self._server.list_dispatches(req.room)
        except KeyError as exc:
            raise _not_found(_key_message(exc)) from None
        if req.dispatch_id:
            dispatches = [d for d in dispatches if d.id == req.dispatch_id]
        return dispatch_pb.ListAgentDispatchResponse(agent_dispatches=dispatches)


def server_api(server: DevServer) -> Mapping[str, Mapping[str, Method]]:
    """The Twirp services of *server*: service name -> method name -> :class:`Method`."""
    api = _Api(server)
    return {
        "livekit.RoomService": {
            "CreateRoom": Method(room_pb.CreateRoomRequest, api.create_room),
            "ListRooms": Method(room_pb.ListRoomsRequest, api.list_rooms),
            "DeleteRoom": Method(room_pb.DeleteRoomRequest, api.delete_room),
            "ListParticipants": Method(room_pb.ListParticipantsRequest, api.list_participants),
            "GetParticipant": Method(room_pb.RoomParticipantIdentity, api.get_participant),
            "RemoveParticipant": Method(room_pb.RoomParticipantIdentity, api.remove_participant),
            "MutePublishedTrack": Method(room_pb.MuteRoomTrackRequest, api.mute_published_track),
            "UpdateParticipant": Method(room_pb.UpdateParticipantRequest, api.update_participant),
            "UpdateRoomMetadata": Method(
                room_pb.UpdateRoomMetadataRequest, api.update_room_metadata
            ),
            "SendData": Method(room_pb.SendDataRequest, api.send_data),
        },
        "livekit.AgentDispatchService": {
            "CreateDispatch": Method(dispatch_pb.CreateAgentDispatchRequest, api.create_dispatch),
            "DeleteDispatch": Method(dispatch_pb.DeleteAgentDispatchRequest, api.delete_dispatch),
            "ListDispatch": Method(dispatch_pb.ListAgentDispatchRequest, api.list_dispatch),
        },
    }
