"""Access control benchmark: what authentication costs a unary call and a study retrieve.

Usage (from the repository root)::

    .venv/bin/python bench/auth.py            # writes the Access control section of RESULTS.md
    .venv/bin/python bench/auth.py --quick    # a small smoke run

Two ``dicomrpc serve`` processes on loopback hold the same 100-instance CT study (the ingest
corpus's first): one without auth options (as the quick start runs), one with bearer tokens
(``--auth-jwks`` on a key set file made here, RS256) and an API key file. Measured through the
SDK, one channel per configuration:

- auth off: the first server, no credentials;
- JWT: the second, a token with ``dicom.read`` (verified once, then remembered until it
  expires, as every call of a client presents the same token);
- API key: the second, an API key with ``dicom.read`` (a SHA-256 and a constant-time
  comparison per call);
- JWT, a new token every call: the signature check itself, paid by every call (tokens are
  signed beforehand).

The unary call is ``GetLatestChange`` (``Client.latest_change()``, a call that does almost
nothing, so the access check is most of what differs); the retrieve is ``RetrieveStudy``
through ``Client.iter_instances``. Rounds alternate the configurations' order; p50 is over every
call of every round, MB/s the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import psutil
from corpus import small_study
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import MB, ROOT, WORK, dicomrpc_server, load_dicomrpc, machine, write_section
from jwt.algorithms import RSAAlgorithm
from retrieve import grpc_study_bytes

sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "server"))
from dicomrpc import Client, ClientConfig
from dicomrpc.v1.management_service_pb2 import GetLatestChangeRequest
from dicomrpc.v1.management_service_pb2_grpc import ManagementServiceStub
from dicomrpc_server.access.api_keys import create
from dicomrpc_server.access.authenticator import Authenticator, Credentials
from dicomrpc_server.config import Settings

SECTION = "## Access control"
ISSUER = "https://issuer.bench.example"
AUDIENCE = "api://dicomrpc-bench"
GOAL_COST = 0.05
BLOCK = 50


class Issuer:
    """An RS256 signing key, published as a key set file."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self, path: Path) -> Path:
        entry = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        entry.update(kid="bench-1", use="sig", alg="RS256")
        path.write_text(json.dumps({"keys": [entry]}))
        return path

    def token(self, number: int = 0) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench",
            "scope": "dicom.read",
            "iat": now,
            "exp": now + 3600,
            "jti": str(number),
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench-1"})


@dataclass
class Config:
    """One way of calling: a server, and the token its calls present (or a new one each)."""

    name: str
    target: str
    server: psutil.Process
    token: str | None = None
    fresh: bool = False
    unary_ms: list[float] = field(default_factory=list)
    check_us: float = float("nan")
    cpu_s: float = 0.0
    cpu_calls: int = 0
    retrieve_mbps: list[list[float]] = field(default_factory=list)  # per round, per retrieve

    def client(self) -> Client:
        options = (("grpc.use_local_subchannel_pool", 1),)
        client = Client(self.target, ClientConfig(token=self.token, options=options))
        grpc.channel_ready_future(client.channel).result(timeout=30)
        return client


def one_call(config: Config, stack: contextlib.ExitStack, tokens: list[str]) -> Callable[[], None]:
    """A function making one ``GetLatestChange`` call the configuration's way.

    A configuration with ``fresh`` presents one of ``tokens`` per call, each one the server has
    never seen, on one channel (the token as call metadata, as the SDK's interceptor sends it).
    """
    if config.fresh:
        channel = stack.enter_context(grpc.insecure_channel(config.target))
        stub = ManagementServiceStub(channel)
        request = GetLatestChangeRequest()
        unseen = iter(tokens)

        def call() -> None:
            stub.GetLatestChange(request, metadata=[("authorization", f"Bearer {next(unseen)}")])

        return call
    client = stack.enter_context(config.client())
    return client.latest_change


def unary_round(configs: list[Config], calls: int, fresh: int, tokens: list[str]) -> None:
    """``calls`` sequential calls per configuration (``fresh`` for the new-token one).

    The configurations take turns in blocks of :data:`BLOCK` calls, so that a machine whose
    load drifts weighs on each alike.
    """
    blocks = calls // BLOCK
    per_block = {c.name: max(1, fresh // blocks) if c.fresh else BLOCK for c in configs}
    with contextlib.ExitStack() as stack:
        callers = {c.name: one_call(c, stack, tokens[1:]) for c in configs}
        for config in configs:
            if not config.fresh:
                for _ in range(50):  # the connection, and the token verified once
                    callers[config.name]()
        for _ in range(blocks):
            for config in configs:
                call = callers[config.name]
                server = config.server.cpu_times()
                client = time.process_time()
                for _ in range(per_block[config.name]):
                    started = time.perf_counter()
                    call()
                    config.unary_ms.append((time.perf_counter() - started) * 1000)
                spent = config.server.cpu_times()
                config.cpu_s += time.process_time() - client
                config.cpu_s += spent.user + spent.system - server.user - server.system
                config.cpu_calls += per_block[config.name]


def retrieve_round(configs: list[Config], study: str, expected: int, repeats: int) -> None:
    """``repeats`` study retrieves per configuration, taking turns; the MB/s of each."""
    with contextlib.ExitStack() as stack:
        clients = {c.name: stack.enter_context(c.client()) for c in configs}
        for client in clients.values():
            grpc_study_bytes(client, study)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(repeats):
            for config in configs:
                started = time.perf_counter()
                received = grpc_study_bytes(clients[config.name], study)
                rates[config.name].append(expected / MB / (time.perf_counter() - started))
                if received != expected:
                    raise RuntimeError(f"{config.name}: {received} bytes, expected {expected}")
        for config in configs:
            config.retrieve_mbps.append(rates[config.name])


def admission_us(
    authenticator: Authenticator, authorizations: list[str | None], warm_up: str | None
) -> float:
    """Microseconds the server's access check takes per call (in this process, no network).

    Each of ``authorizations`` is checked once, after 100 checks of ``warm_up``.
    """

    async def run() -> float:
        for _ in range(100):
            await authenticator.admit(Credentials(warm_up, "", ""), "dicom.read", "bench")
        started = time.perf_counter()
        for authorization in authorizations:
            admission = await authenticator.admit(
                Credentials(authorization, "", "127.0.0.1:50000"), "dicom.read", "bench"
            )
            if admission.error is not None:
                raise RuntimeError(f"refused: {admission.error}")
        return (time.perf_counter() - started) / len(authorizations) * 1e6

    return asyncio.run(run())


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    configs: list[Config], study_mb: float, rounds: int, calls: int, fresh: int, repeats: int
) -> str:
    off = configs[0]
    rows = [
        "| configuration | access check µs | unary CPU µs | unary p50 ms | vs auth off "
        "| study retrieve MB/s | (rounds) | vs auth off |",
        "|---|--:|--:|--:|--:|--:|--|--:|",
    ]
    verdicts = []
    for config in configs:
        unary = p50(config.unary_ms)
        unary_cost = unary / p50(off.unary_ms) - 1
        if config.retrieve_mbps:
            mbps = statistics.median(v for r in config.retrieve_mbps for v in r)
            mbps_cost = 1 - mbps / statistics.median(v for r in off.retrieve_mbps for v in r)
            spread = ", ".join(f"{statistics.median(r):.0f}" for r in config.retrieve_mbps)
            change = "—" if config is off else f"{-mbps_cost:+.1%}"
            retrieve_cells = f"{mbps:.0f} | {spread} | {change}"
        else:
            mbps_cost = 0.0
            retrieve_cells = "— | | —"
        delta = "—" if config is off else f"{unary_cost:+.1%}"
        cpu = config.cpu_s / config.cpu_calls * 1e6
        rows.append(
            f"| {config.name} | {config.check_us:.1f} | {cpu:.0f} | {unary:.3f} | {delta} "
            f"| {retrieve_cells} |"
        )
        if config is not off and not config.fresh:
            met = unary_cost < GOAL_COST and mbps_cost < GOAL_COST
            verdicts.append(
                f"- **{config.name}: unary p50 {unary_cost:+.1%}, retrieve {-mbps_cost:+.1%}** "
                f"— goal: under {GOAL_COST:.0%} cost: {'met' if met else 'NOT met'}."
            )
    return "\n".join(
        [
            SECTION,
            "",
            "Written by `.venv/bin/python bench/auth.py`; rerun it to refresh this section.",
            "",
            f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {machine()}; {platform.platform()}",
            f"- Software: Python {platform.python_version()}, grpcio {grpc.__version__}, "
            f"PyJWT {jwt.__version__}",
            f"- Two servers on loopback, each holding the same {study_mb:.1f} MB 100-instance CT "
            "study: one without auth options, one with `--auth-jwks` (an RS256 key set file), "
            "`--auth-issuer`, `--auth-audience` and `--auth-api-keys`. Plaintext gRPC (TLS is "
            "the same for every configuration and not measured here).",
            f"- Unary: `Client.latest_change()` (`GetLatestChange`), {calls} sequential calls per "
            f"configuration per round after 50 warm-up calls, the configurations taking turns "
            f"in blocks of {BLOCK} calls, {rounds} rounds, p50 of every call. A new token every "
            f"call: about {fresh} calls per round on one channel, each with a token the server "
            "has not seen (so each pays the RS256 signature check). Retrieve: "
            f"`Client.iter_instances(study)`, {repeats} retrieves per configuration per round, "
            "taking turns; MB/s of each retrieve, the median of all (each round's median under "
            "(rounds)). Rounds alternate the configurations' order.",
            "- Access check: the server's `Authenticator.admit` for one call, timed in the "
            "benchmark's process with the servers' settings (no network), 20000 calls, mean. A "
            "retrieve is one call: it pays the check once per study.",
            "- Unary CPU: client and server process CPU (user + system) during the timed blocks, "
            "per call.",
            "- MB = 2^20 bytes. Client and servers share the machine's CPUs.",
            "",
            *rows,
            "",
            "Goal: with a token or an API key, under 5% cost against auth off (a client's "
            "token is verified once and remembered until it expires).",
            "",
            *verdicts,
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds, calls, fresh, repeats = (2, 300, 50, 2) if args.quick else (5, 2000, 300, 10)
    study = small_study()
    issuer = Issuer()
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as scratch, contextlib.ExitStack() as stack:
        folder = Path(scratch)
        keys = folder / "api-keys"
        api_key = create(keys, "bench", ["dicom.read"])
        writer = create(keys, "bench-loader", ["dicom.write"])
        auth_args = [
            "--auth-jwks",
            str(issuer.jwks(folder / "jwks.json")),
            "--auth-issuer",
            ISSUER,
            "--auth-audience",
            AUDIENCE,
            "--auth-api-keys",
            str(keys),
        ]
        plain, plain_pid = stack.enter_context(dicomrpc_server(folder / "off", folder / "off.log"))
        secured, secured_pid = stack.enter_context(
            dicomrpc_server(folder / "on", folder / "on.log", serve_args=auth_args)
        )
        load_dicomrpc(plain, study.files)
        with Client(secured, ClientConfig(token=writer)) as loader:
            for start in range(0, len(study.files), 25):
                outcome = loader.store([str(p) for p in study.files[start : start + 25]])
                if any(not i.outcome.startswith("stored") for i in outcome.instances):
                    raise RuntimeError("the secured server did not store the study")
        off, on = psutil.Process(plain_pid), psutil.Process(secured_pid)
        configs = [
            Config("auth off", plain, off),
            Config("JWT (RS256)", secured, on, issuer.token()),
            Config("API key", secured, on, api_key),
            Config("JWT, a new token every call", secured, on, fresh=True),
        ]
        expected = study.total_bytes
        settings = {
            "auth_jwks": str(folder / "jwks.json"),
            "auth_issuer": ISSUER,
            "auth_audience": AUDIENCE,
            "auth_api_keys": keys,
        }
        checks = [
            (Authenticator(Settings(data_dir=folder)), None),
            (Authenticator(Settings(data_dir=folder, **settings)), f"Bearer {configs[1].token}"),
            (Authenticator(Settings(data_dir=folder, **settings)), f"Bearer {api_key}"),
        ]
        for config, (authenticator, authorization) in zip(configs, checks, strict=False):
            config.check_us = admission_us(authenticator, [authorization] * 20000, authorization)
        unseen: list[str | None] = [f"Bearer {issuer.token(100_000 + i)}" for i in range(fresh)]
        configs[3].check_us = admission_us(
            Authenticator(Settings(data_dir=folder, **settings)),
            unseen,
            f"Bearer {configs[1].token}",
        )
        for number in range(rounds):
            order = configs if number % 2 == 0 else list(reversed(configs))
            tokens = [issuer.token(number * (fresh + 1) + i) for i in range(fresh + 1)]
            unary_round(order, calls, fresh, tokens)
            retrieve_round([c for c in order if not c.fresh], study.uid, expected, repeats)
            print(f"round {number + 1}/{rounds} done", flush=True)
    section = report(configs, study.total_bytes / MB, rounds, calls, fresh, repeats)
    print(section)
    if not args.no_write and not args.quick:
        write_section(section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
