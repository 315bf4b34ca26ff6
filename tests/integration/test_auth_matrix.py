"""Every RPC and every route, called with every kind of credential, answers as the table says.

One server for the module, with bearer tokens (a key set file), API keys and CORS on. Each RPC
of the proto descriptors and each route of the gateway is called with no credential, a
malformed one, tokens of the wrong issuer or audience, expired or signed by another key, and
a token and an API key for each scope: bad credentials answer UNAUTHENTICATED / 401 with a
``WWW-Authenticate`` challenge, a scope that is not the one needed PERMISSION_DENIED / 403
naming it, and the scope needed gets past access control to the handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc_server.access.api_keys import create
from dicomrpc_server.access.scopes import OPEN, ROUTE_SCOPES, RPC_SCOPES, SCOPES
from tests.authgen import AUDIENCE, ISSUER, Issuer, access_record, write_jwks
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance
from tests.test_access_scopes import gateway_routes, proto_methods

ORIGIN = "https://viewer.example"
ISSUER_KEY = Issuer("key-1")
OTHER_KEY = Issuer("key-1")  # the same key id, another key: its signatures do not verify


@dataclass(frozen=True)
class Credential:
    name: str
    authorization: str | None
    scope: str | None  # the scope it grants; None: refused as unauthenticated


@dataclass
class Secured:
    server: RunningServer
    credentials: list[Credential]
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("auth")
    jwks = write_jwks(folder / "jwks.json", ISSUER_KEY)
    keys = folder / "api-keys"
    every = " ".join(sorted(SCOPES))
    tokens = {scope: ISSUER_KEY.token(scope, subject=f"user-{scope}") for scope in SCOPES}
    credentials = [
        Credential("no credential", None, None),
        Credential("other scheme", "Basic dXNlcjpwYXNz", None),
        Credential("malformed", "Bearer not.a.jwt", None),
        Credential("unknown API key", "Bearer dicomrpc_unknown", None),
        Credential("wrong issuer", "Bearer " + ISSUER_KEY.token(every, iss="https://evil"), None),
        Credential("wrong audience", "Bearer " + ISSUER_KEY.token(every, aud="api://x"), None),
        Credential("expired", "Bearer " + ISSUER_KEY.token(every, lifetime=-3600), None),
        Credential("wrong key", "Bearer " + OTHER_KEY.token(every), None),
        *(Credential(f"token {s}", f"Bearer {t}", s) for s, t in tokens.items()),
        *(
            Credential(f"API key {s}", "Bearer " + create(keys, f"svc-{s}", [s]), s)
            for s in sorted(SCOPES)
        ),
    ]
    server = start_server(
        folder / "data",
        auth_jwks=str(jwks),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_api_keys=keys,
        cors_origins=(ORIGIN,),
    )
    yield Secured(server, credentials, tokens)
    server.stop()


def _status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, dict[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    metadata: dict[str, str] = {}
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            metadata = dict(info.metadata)
    return error.code(), metadata


def call_rpc(channel: grpc.Channel, method: str, authorization: str | None) -> Any:
    """Call ``method`` with an empty request message; its status code and ErrorInfo metadata."""
    client_streaming, server_streaming = SHAPES[method]
    metadata = [("authorization", authorization)] if authorization else []
    identity = {"request_serializer": lambda m: m, "response_deserializer": lambda m: m}
    request: Any = iter([b""]) if client_streaming else b""
    try:
        if server_streaming:
            factory = channel.stream_stream if client_streaming else channel.unary_stream
            call = factory(method, **identity)(request, metadata=metadata, timeout=1)
            try:
                next(call)
            finally:
                call.cancel()
            return grpc.StatusCode.OK, {}
        factory = channel.stream_unary if client_streaming else channel.unary_unary
        factory(method, **identity)(request, metadata=metadata, timeout=30)
        return grpc.StatusCode.OK, {}
    except StopIteration:
        return grpc.StatusCode.OK, {}
    except grpc.RpcError as error:
        return _status_of(error)


def _shapes() -> dict[str, tuple[bool, bool]]:
    import importlib
    import pkgutil

    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    import dicomrpc.v1

    modules = [
        importlib.import_module(f"dicomrpc.v1.{info.name}")
        for info in pkgutil.iter_modules(dicomrpc.v1.__path__)
        if info.name.endswith("_pb2")
    ]
    return {
        f"/{service.full_name}/{m.name}": (m.client_streaming, m.server_streaming)
        for module in [*modules, health_pb2, reflection_pb2]
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }


SHAPES = _shapes()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(proto_methods()))
def test_every_rpc_answers_each_credential_as_the_table_says(secured: Secured, method: str) -> None:
    needed = RPC_SCOPES[method]
    with grpc.insecure_channel(secured.server.target) as channel:
        for credential in secured.credentials:
            code, metadata = call_rpc(channel, method, credential.authorization)
            what = f"{method} with {credential.name}"
            if needed == OPEN:
                assert code not in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), what
            elif credential.scope is None:
                assert code == grpc.StatusCode.UNAUTHENTICATED, what
                assert metadata.get("token_problem"), what
            elif credential.scope != needed:
                assert code == grpc.StatusCode.PERMISSION_DENIED, what
                assert metadata["scope"] == needed, what
            else:
                assert code not in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), what


_PARAMETERS = {
    "study": "1.2.3.4",
    "series": "1.2.3.5",
    "instance": "1.2.3.6",
    "frames": "1",
    "frame": "1",
    "path": "7FE00010",
    "workitem": "1.2.3.7",
}


@pytest.mark.parametrize(("method", "template"), sorted(gateway_routes()))
def test_every_route_answers_each_credential_as_the_table_says(
    secured: Secured, method: str, template: str
) -> None:
    needed = ROUTE_SCOPES[(method, template)]
    path = template.format(**_PARAMETERS)
    with httpx.Client(base_url=secured.server.dicomweb_url, timeout=60) as http:
        for credential in secured.credentials:
            headers = (
                {"Authorization": credential.authorization} if credential.authorization else {}
            )
            response = http.request(method, path, headers=headers)
            what = f"{method} {path} with {credential.name}: {response.status_code}"
            challenge = response.headers.get("www-authenticate", "")
            if credential.scope is None:
                assert response.status_code == 401, what
                assert response.json()["code"] == "UNAUTHENTICATED", what
                if credential.authorization is None:
                    assert challenge == 'Bearer realm="dicomrpc"', what
                else:
                    assert challenge.startswith('Bearer realm="dicomrpc", error="invalid_token"')
            elif credential.scope != needed:
                assert response.status_code == 403, what
                assert needed in response.json()["message"], what
                assert f'error="insufficient_scope", scope="{needed}"' in challenge, what
            else:
                assert response.status_code not in (401, 403), what
                assert not challenge, what


def test_a_caller_without_read_learns_nothing_about_what_exists(secured: Secured) -> None:
    """403 comes before any lookup: the same answer for a study that exists and one that does
    not, over both adapters."""
    study, series = generate_uid(), generate_uid()
    with Client(secured.server.target, token=secured.tokens["dicom.write"]) as writer:
        stored = writer.store([ct_instance(study, series)])
        assert len(stored.stored) == 1
        sop = stored.stored[0].sop_instance_uid
        answers = []
        for uid in (study, generate_uid()):
            with pytest.raises(DicomRpcError) as refused:
                writer.metadata(uid)
            answers.append((refused.value.code, refused.value.message, refused.value.metadata))
            with pytest.raises(DicomRpcError) as refused:
                writer.retrieve_study(uid)
            answers.append((refused.value.code, refused.value.message, refused.value.metadata))
        assert answers[0] == answers[2] and answers[1] == answers[3]
        assert answers[0][0] == grpc.StatusCode.PERMISSION_DENIED
    headers = {"Authorization": f"Bearer {secured.tokens['dicom.write']}"}
    with httpx.Client(base_url=secured.server.dicomweb_url, headers=headers) as http:
        for suffix in ("", "/metadata", f"/series/{series}/instances/{sop}/frames/1"):
            there = http.get(f"/studies/{study}{suffix}")
            missing = http.get(f"/studies/{generate_uid()}{suffix}")
            assert there.status_code == missing.status_code == 403
            assert there.content == missing.content
            assert there.headers["www-authenticate"] == missing.headers["www-authenticate"]
    # The same caller with dicom.read sees the difference.
    reader = {"Authorization": f"Bearer {secured.tokens['dicom.read']}"}
    with httpx.Client(base_url=secured.server.dicomweb_url, headers=reader) as http:
        assert http.get(f"/studies/{study}/metadata").status_code == 200
        assert http.get(f"/studies/{generate_uid()}/metadata").status_code == 404


def test_cors_preflights_pass_and_refusals_carry_cors_headers(secured: Secured) -> None:
    with httpx.Client(base_url=secured.server.dicomweb_url) as http:
        preflight = http.options(
            "/studies",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = http.get("/studies", headers={"Origin": ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        allowed = http.get(
            "/studies",
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {secured.tokens['dicom.read']}"},
        )
        assert allowed.status_code in (200, 204)


def test_paths_of_no_route_need_credentials_then_answer_404(secured: Secured) -> None:
    with httpx.Client(base_url=secured.server.dicomweb_url) as http:
        assert http.get("/nothing-here").status_code == 401
        # ``/dicomweb/../admin`` leaves the gateway: the web viewer's public site answers it
        # with its page (the viewer, or how to fetch it), never with archive data.
        outside = http.get("/../admin")
        assert outside.status_code in (200, 503)
        assert outside.headers["content-type"].startswith("text/html")
        token = {"Authorization": f"Bearer {secured.tokens['dicom.read']}"}
        assert http.get("/nothing-here", headers=token).status_code == 404
        assert http.patch("/studies", headers=token).status_code == 405


def test_roles_map_to_scopes(tmp_path: Path) -> None:
    jwks = write_jwks(tmp_path / "jwks.json", ISSUER_KEY)
    server = start_server(
        tmp_path / "data",
        auth_jwks=str(jwks),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_roles=(("Radiologist", ("dicom.read",)), ("Archivist", ("dicom.delete",))),
    )
    try:
        radiologist = ISSUER_KEY.token(roles=["Radiologist"])
        with Client(server.target, token=radiologist) as client:
            assert client.search_studies().datasets == []
            with pytest.raises(DicomRpcError) as refused:
                client.delete_study(generate_uid())
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert refused.value.metadata["scope"] == "dicom.delete"
    finally:
        server.stop()


def test_refusals_are_in_the_access_log(secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
    # Set for the whole test: an HTTP line is written once the response is sent.
    caplog.set_level("INFO", logger="dicomrpc.access")
    with Client(secured.server.target) as client, pytest.raises(DicomRpcError):
        client.search_studies()
    httpx.get(secured.server.dicomweb_url + "/studies")
    access_record(
        caplog, {"rpc": "/dicomrpc.v1.SearchService/SearchStudies", "code": "UNAUTHENTICATED"}
    )
    access_record(caplog, {"path": "/dicomweb/studies", "status": 401, "caller": "anonymous"})
