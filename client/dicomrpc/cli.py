"""The ``dicomrpc`` command line: serve, store, search, retrieve, frames, metadata, delete, ...

The rest: ``feed`` (the change feed), ``workitem`` (UPS, in :mod:`.workitem_commands`) and
``api-key`` (the server's API key file), ``viewer fetch`` (the OHIF viewer ``serve`` shows).
Every client command takes the options of
:mod:`.connection`: the server, a token and TLS.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc
from tqdm import tqdm

from dicomrpc import __version__
from dicomrpc.client import Client
from dicomrpc.connection import add_connection_arguments, connect
from dicomrpc.datasets import keyword, to_json
from dicomrpc.errors import DicomRpcError
from dicomrpc.results import Change, InstanceResult, ReindexStatus
from dicomrpc.sources import Item, expand
from dicomrpc.workitem_commands import add_parser as add_workitem_parser
from dicomrpc.workitem_commands import workitem_command

# A store stream is closed after this many instances or bytes, so results arrive steadily.
BATCH_INSTANCES = 64
BATCH_BYTES = 256 * 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomrpc",
        description="A DICOM archive over gRPC, DICOMweb and DIMSE: run it (serve) and use it "
        "(store, search, retrieve, render, delete, feed, workitem ...). Every client command "
        "takes --server HOST:PORT, --token and the --tls options; `dicomrpc COMMAND --help` "
        "tells more.",
    )
    parser.add_argument("--version", action="version", version=f"dicomrpc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the archive server")
    from dicomrpc_server.config import (
        add_migrate_arguments,
        add_rebuild_arguments,
        add_serve_arguments,
    )

    add_serve_arguments(serve)
    rebuild = sub.add_parser(
        "rebuild-index", help="rebuild a data folder's index from its instance files"
    )
    add_rebuild_arguments(rebuild)
    migrate = sub.add_parser(
        "migrate",
        help="copy an embedded archive to a PostgreSQL index and a shared folder or S3",
        description="Copy the embedded archive of a data folder (its LMDB index and instance "
        "files) to a PostgreSQL database and a shared folder or S3 bucket, for several nodes to "
        "serve. The data folder is locked and left unchanged; the copy is resumable (run the "
        "same command again after an interruption) and verified at the end. Workitems with "
        "their events, extended query tags and DIMSE peers are carried over; instance "
        "versions are numbered anew and the change feed starts again from 1 (a follower of "
        "the feed starts again from 0). It ends printing the serve command of the new storage.",
    )
    add_migrate_arguments(migrate)
    from dicomrpc_server.lifecycle.backup_options import (
        add_backup_arguments,
        add_restore_arguments,
    )

    add_backup_arguments(
        sub.add_parser(
            "backup",
            help="copy an embedded archive consistently, while it serves",
            description="Snapshot the data folder's index, then copy every instance file it "
            "names, verified, with a manifest; written as DEST.partial and renamed to DEST "
            "when complete. The server goes on serving meanwhile.",
        )
    )
    add_restore_arguments(
        sub.add_parser(
            "restore",
            help="make a backup a data folder again, verified",
            description="Copy a complete backup into a new data folder, checking every "
            "file's SHA-256 and the index against the manifest; then serve it with "
            "`dicomrpc serve --data NEWDIR`.",
        )
    )
    from dicomrpc_server.viewer.command import add_viewer_arguments

    viewer = sub.add_parser(
        "viewer", help="the OHIF web viewer 'serve' shows at the HTTP port's root: fetch it"
    )
    add_viewer_arguments(viewer)

    store = sub.add_parser("store", help="store DICOM files and folders (recursive)")
    store.add_argument("paths", nargs="+", help="files or folders")
    store.add_argument("--study", help="restrict to one StudyInstanceUID (others fail, 43265)")
    add_connection_arguments(store)
    store.add_argument("--concurrency", type=int, default=4, help="parallel streams (4)")
    store.add_argument("--quiet", action="store_true", help="no progress bar")

    retrieve = sub.add_parser("retrieve", help="retrieve a study, series or instance to a folder")
    _add_uids(retrieve)
    retrieve.add_argument("--out", required=True, help="folder to write <study>/<series>/<sop>.dcm")
    retrieve.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_syntax(retrieve)

    frames = sub.add_parser("frames", help="retrieve frames of an instance to a folder")
    frames.add_argument("study")
    frames.add_argument("series")
    frames.add_argument("instance")
    frames.add_argument("numbers", nargs="+", type=int, help="1-based frame numbers")
    frames.add_argument("--out", required=True, help="folder to write frame-<n>.bin files")
    _add_syntax(frames)

    render = sub.add_parser("render", help="write a frame of an instance as a JPEG or PNG image")
    render.add_argument("study")
    render.add_argument("series")
    render.add_argument("instance")
    render.add_argument("--out", required=True, help="the image file (.png writes PNG)")
    render.add_argument("--frame", type=int, default=1, help="1-based frame number (1)")
    render.add_argument(
        "--window",
        type=_window,
        metavar="CENTER,WIDTH",
        help="VOI window to apply instead of the stored one",
    )
    render.add_argument("--max-size", type=int, default=0, help="largest side in pixels")
    render.add_argument("--quality", type=int, default=0, help="JPEG quality 1-100")

    metadata = sub.add_parser("metadata", help="print metadata as DICOM JSON")
    _add_uids(metadata)

    delete = sub.add_parser("delete", help="delete a study, series or instance")
    delete.add_argument("level", choices=["study", "series", "instance"])
    delete.add_argument(
        "uids", nargs="+", help="study; study series; or study series instance UIDs"
    )
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    feed = sub.add_parser("feed", help="print the change feed (or follow it)")
    feed.add_argument("--since", type=int, default=0, help="start after this sequence (0)")
    feed.add_argument("--limit", type=int, default=100, help="entries per read (100)")
    feed.add_argument("--follow", action="store_true", help="keep printing new changes")
    feed.add_argument("--json", action="store_true", help="one JSON object per line")

    search = sub.add_parser("search", help="search studies, series or instances")
    search.add_argument("level", choices=["studies", "series", "instances"])
    search.add_argument("terms", nargs="*", help="KEY=VALUE match terms (keyword or tag)")
    search.add_argument("--study", default="", help="search within this study")
    search.add_argument("--series", default="", help="search within this series (instances)")
    search.add_argument("--fuzzy", action="store_true", help="fuzzy person-name matching")
    search.add_argument("--include", action="append", default=[], help="extra attribute, or all")
    search.add_argument("--limit", type=int, default=0, help="most results (100, at most 1000)")
    search.add_argument("--offset", type=int, default=0, help="results to skip")
    search.add_argument("--json", action="store_true", help="print DICOM JSON")

    tags = sub.add_parser("query-tags", help="manage extended query tags (indexed attributes)")
    tags_sub = tags.add_subparsers(dest="action", required=True)
    add = tags_sub.add_parser("add", help="index attributes; waits for re-indexing with a bar")
    add.add_argument("tags", nargs="+", help="keyword or 8-hex tag, optionally TAG:VR")
    add.add_argument(
        "--level",
        default="",
        choices=["study", "series", "instance"],
        help="the level whose records keep the attribute: required for an attribute the "
        "archive does not keep already (default: the level that keeps it)",
    )
    add.add_argument("--private-creator", default="", help="the private creator of private tags")
    add.add_argument("--no-wait", action="store_true", help="return once re-indexing starts")
    tags_sub.add_parser("list", help="list the extended query tags")
    remove = tags_sub.add_parser("delete", help="stop indexing an attribute")
    remove.add_argument("tag")
    status = tags_sub.add_parser("status", help="show a re-indexing operation's progress")
    status.add_argument("operation_id")
    for command in tags_sub.choices.values():
        add_connection_arguments(command)

    peers = sub.add_parser("peers", help="the DIMSE peers the archive's C-MOVE may send to")
    peers_sub = peers.add_subparsers(dest="action", required=True)
    peers_sub.add_parser("list", help="list the peers (name, AE title, address, source)")
    add_peer = peers_sub.add_parser("add", help="add a peer, or replace one added before")
    add_peer.add_argument("name", help="the peer's name (letters, digits, '.-_')")
    add_peer.add_argument("address", metavar="AE@HOST:PORT", help="its AE title and address")
    remove_peer = peers_sub.add_parser("remove", help="remove a peer added with 'peers add'")
    remove_peer.add_argument("name")
    for command in peers_sub.choices.values():
        add_connection_arguments(command)

    _add_api_key_parser(sub)

    for command in (retrieve, frames, render, metadata, delete, feed, search):
        add_connection_arguments(command)
    add_workitem_parser(sub, add_connection_arguments)
    return parser


def _add_api_key_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("api-key", help="create, list or revoke API keys (in the key file)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="draw a key, add its line, print the key once")
    create.add_argument("name", help="the key's name: the identity of those who present it")
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: dicom.read, dicom.write, dicom.delete, workitems.read, "
        "workitems.write, admin",
    )
    actions.add_parser("list", help="list the keys' names and scopes")
    revoke = actions.add_parser("revoke", help="remove a key's line")
    revoke.add_argument("name")
    for action in actions.choices.values():
        action.add_argument(
            "--file",
            type=Path,
            default=os.environ.get("DICOMRPC_AUTH_API_KEYS"),
            required="DICOMRPC_AUTH_API_KEYS" not in os.environ,
            help="the key file of 'serve --auth-api-keys' (env DICOMRPC_AUTH_API_KEYS)",
        )


def api_key_command(args: argparse.Namespace) -> int:
    """Create (printing the key, once), list or revoke API keys of a key file."""
    from dicomrpc_server.access import api_keys

    path = Path(args.file)
    try:
        if args.action == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            key = api_keys.create(path, args.name, scopes)
            print(key)
            print(
                f"added {args.name} ({', '.join(sorted(set(scopes)))}) to {path}; the key is "
                "shown this once and stored nowhere",
                file=sys.stderr,
            )
        elif args.action == "list":
            for entry in api_keys.ApiKeyFile(path).keys:
                print(f"{entry.name} {','.join(sorted(entry.scopes))}")
        elif not api_keys.revoke(path, args.name):
            print(f"dicomrpc api-key: no key named {args.name!r} in {path}", file=sys.stderr)
            return 1
    except (OSError, ValueError) as error:
        print(f"dicomrpc api-key: {error}", file=sys.stderr)
        return 2
    return 0


_DELETE_ARITY = {"study": 1, "series": 2, "instance": 3}


_COLUMNS = {
    "studies": ["00100010", "00100020", "00080020", "00080061", "00201208", "0020000D"],
    "series": ["0020000D", "00080060", "00200011", "00201209", "0020000E"],
    "instances": ["0020000E", "00200013", "00080016", "00080018"],
}


def _cell(element: dict[str, object] | None) -> str:
    if not element or "Value" not in element:
        return ""
    values = element["Value"]
    assert isinstance(values, list)
    return "\\".join(
        str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v) for v in values
    )


def search_command(args: argparse.Namespace) -> int:
    """Print the matches as a table (or DICOM JSON)."""
    match = {}
    for term in args.terms:
        key, sep, value = term.partition("=")
        if not sep:
            print(f"dicomrpc search: {term!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        match[key] = value
    if args.series and not args.study:
        print("dicomrpc search: --series needs --study (the series' study UID)", file=sys.stderr)
        return 2
    if args.series and args.level != "instances":
        print(
            "dicomrpc search: --series scopes a search of instances "
            "(dicomrpc search instances --study S --series X)",
            file=sys.stderr,
        )
        return 2
    if args.study and args.level == "studies":
        match.setdefault("StudyInstanceUID", args.study)
    options = {
        "fuzzy": args.fuzzy,
        "include": args.include,
        "limit": args.limit,
        "offset": args.offset,
    }
    with connect(args) as client:
        if args.level == "studies":
            result = client.search_studies(match, **options)
        elif args.level == "series":
            result = client.search_series(match, study=args.study, **options)
        else:
            result = client.search_instances(match, study=args.study, series=args.series, **options)
    rows = result.as_json()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    columns = _COLUMNS[args.level]
    names = [keyword(c) or c for c in columns]
    table = [names, *([_cell(row.get(c)) for c in columns] for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    singular = {"studies": "study", "series": "series", "instances": "instance"}
    print(f"{len(rows)} {args.level if len(rows) != 1 else singular[args.level]}")
    return 0


def delete_command(args: argparse.Namespace) -> int:
    """Delete after confirmation (or ``--yes``); print how many instances went."""
    if len(args.uids) != _DELETE_ARITY[args.level]:
        names = ["STUDY", "SERIES", "INSTANCE"][: _DELETE_ARITY[args.level]]
        print(f"dicomrpc delete {args.level} takes {' '.join(names)}", file=sys.stderr)
        return 2
    what = f"{args.level} {args.uids[-1]}"
    if not args.yes:
        answer = input(f"Delete {what} and everything in it? [y/N] ") if sys.stdin.isatty() else ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted (confirm, or pass --yes)", file=sys.stderr)
            return 1
    with connect(args) as client:
        if args.level == "study":
            count = client.delete_study(*args.uids)
        elif args.level == "series":
            count = client.delete_series(*args.uids)
        else:
            count = client.delete_instance(*args.uids)
    print(f"deleted {what}: {count} instances")
    return 0


def feed_command(args: argparse.Namespace) -> int:
    """Print change feed entries, one per line; with ``--follow``, until interrupted."""
    with connect(args) as client:
        if args.follow:
            changes: Iterable[Change] = client.watch_changes(args.since)
        else:
            changes = client.read_changes(args.since, args.limit)
        try:
            for change in changes:
                if args.json:
                    record = dataclasses.asdict(change)
                    record["time"] = change.time.isoformat()
                    print(json.dumps(record), flush=True)
                else:
                    print(
                        f"{change.sequence} {change.action} {change.state} "
                        f"{change.study_instance_uid} {change.series_instance_uid} "
                        f"{change.sop_instance_uid} v{change.version} "
                        f"{change.time.isoformat()}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            pass
    return 0


def _add_uids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="StudyInstanceUID")
    parser.add_argument("series", nargs="?", help="SeriesInstanceUID")
    parser.add_argument("instance", nargs="?", help="SOPInstanceUID")


def _add_syntax(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transfer-syntax",
        default="*",
        metavar="UID",
        help="transfer syntax to receive (default: as stored); the archive transcodes",
    )
    parser.add_argument(
        "--allow-lossy",
        action="store_true",
        help="accept a lossy transfer syntax for instances stored losslessly",
    )


def _window(text: str) -> tuple[float, float]:
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CENTER,WIDTH (e.g. 40,400)") from None
    return center, width


def retrieve_command(args: argparse.Namespace) -> int:
    """Write the instances of a study, series or instance under ``--out``."""
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="retrieving", disable=args.quiet)

    def progress(n: int) -> None:
        bar.update(n)

    options = {"transfer_syntax": args.transfer_syntax, "allow_lossy": args.allow_lossy}
    with connect(args) as client:
        if args.instance:
            path = client.save_instance(
                args.study, args.series or "", args.instance, args.out, **options, on_bytes=progress
            )
            paths = [path]
        elif args.series:
            paths = client.save_series(
                args.study, args.series, args.out, **options, on_bytes=progress
            )
        else:
            paths = client.save_study(args.study, args.out, **options, on_bytes=progress)
    bar.close()
    for path in paths:
        print(path)
    print(f"{len(paths)} instances retrieved")
    return 0


def frames_command(args: argparse.Namespace) -> int:
    """Write each requested frame's bytes to ``--out/frame-<n>.bin``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with connect(args) as client:
        frames = client.frames(
            args.study,
            args.series,
            args.instance,
            args.numbers,
            transfer_syntax=args.transfer_syntax,
            allow_lossy=args.allow_lossy,
        )
    for frame in frames:
        path = out / f"frame-{frame.number}.bin"
        path.write_bytes(frame.data)
        print(f"{path} {len(frame.data)} bytes {frame.transfer_syntax_uid}")
    return 0


def render_command(args: argparse.Namespace) -> int:
    """Write one frame rendered by the archive (modality LUT and window applied)."""
    out = Path(args.out)
    media_type = "image/png" if out.suffix.lower() == ".png" else "image/jpeg"
    with connect(args) as client:
        got, data = client.rendered(
            args.study,
            args.series,
            args.instance,
            frame=args.frame,
            media_type=media_type,
            quality=args.quality,
            window=args.window,
            max_size=args.max_size,
        )
    out.write_bytes(data)
    print(f"{out} {len(data)} bytes {got}")
    return 0


def metadata_command(args: argparse.Namespace) -> int:
    """Print the metadata as a DICOM JSON array (PS3.18 F.2)."""
    with connect(args) as client:
        result = client.metadata(args.study, args.series, args.instance)
    print(json.dumps([to_json(d) for d in result.datasets], indent=1))
    return 0


def _batches(items: list[Item]) -> list[list[Item]]:
    batches: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if current and (len(current) >= BATCH_INSTANCES or size + item.size > BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        batches.append(current)
    return batches


def store_command(args: argparse.Namespace) -> int:
    """Store files with N parallel streams; print a summary; exit 1 if anything failed."""
    try:
        items = expand(args.paths)
    except OSError as error:
        print(f"dicomrpc store: {error}", file=sys.stderr)
        return 2
    total = sum(i.size for i in items)
    work: queue.Queue[list[Item]] = queue.Queue()
    for batch in _batches(items):
        work.put(batch)
    results: list[InstanceResult] = []
    errors: list[str] = []
    lock = threading.Lock()
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=args.quiet,
        desc="storing",
        dynamic_ncols=True,
    )

    def on_bytes(item: Item, n: int) -> None:
        with lock:
            bar.update(n)

    def worker(client: Client) -> None:
        while True:
            try:
                batch = work.get_nowait()
            except queue.Empty:
                return
            try:
                outcome = client.store(batch, args.study, on_bytes=on_bytes)
            except DicomRpcError as error:
                with lock:
                    errors.append(f"{len(batch)} instances not sent: {error}")
                continue
            with lock:
                results.extend(outcome.instances)
                bar.set_postfix(instances=len(results), refresh=False)

    with connect(args) as client:
        threads = [
            threading.Thread(target=worker, args=(client,), daemon=True)
            for _ in range(max(1, args.concurrency))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    bar.close()
    stored = [r for r in results if r.outcome == "stored"]
    warned = [r for r in results if r.outcome == "stored_with_warnings"]
    again = [r for r in results if r.outcome == "already_stored"]
    failed = [r for r in results if r.outcome == "failed"]
    for r in warned:
        comments = "; ".join(f"{w.keyword or w.tag or 'dataset'}: {w.comment}" for w in r.warnings)
        meaning = _WARNINGS.get(r.warning_reason, "stored with warnings")
        print(f"warning {r.warning_reason} ({meaning}): {r.client_reference}: {comments}")
    for r in failed:
        print(
            f"failed {r.failure_reason} {r.failure_reason_name}: {r.client_reference}: "
            f"{r.failure_message}"
        )
    for message in errors:
        print(f"error: {message}")
    print(
        f"{len(stored)} stored, {len(warned)} stored with warnings, "
        + (f"{len(again)} already stored (identical), " if again else "")
        + f"{len(failed)} failed"
        + (f", {len(errors)} requests failed" if errors else "")
    )
    return 1 if failed or errors else 0


# What a store's warning reasons mean (PS3.18 Table I.2-1 for 45063; 1: attributes the archive
# kept although they break their VR or their module's rules, as STOW-RS reports coercion).
_WARNINGS = {
    45063: "the data set does not match its SOP class",
    1: "attribute values kept as sent although not valid",
}


def query_tags_command(args: argparse.Namespace) -> int:
    """Add, list or delete extended query tags, or show a re-indexing's progress."""
    with connect(args) as client:
        if args.action == "list":
            for tag in client.query_tags():
                name = keyword(tag.tag) or tag.private_creator
                state = "ready" if tag.ready else "re-indexing"
                print(f"{tag.tag} {tag.vr} {tag.level:<8} {state:<11} {name}")
            return 0
        if args.action == "delete":
            client.delete_query_tag(args.tag)
            return 0
        if args.action == "status":
            _print_status(client.reindex_status(args.operation_id))
            return 0
        specs = []
        for text in args.tags:
            tag, _, vr = text.partition(":")
            specs.append({"tag": tag, "vr": vr, "private_creator": args.private_creator})
        added, operation_id = client.add_query_tags(specs, level=args.level)
        print(f"added {', '.join(t.tag for t in added)}; re-indexing operation {operation_id}")
        if args.no_wait:
            return 0
        bar = tqdm(unit="instances", desc="re-indexing", dynamic_ncols=True)

        def show(status: ReindexStatus) -> None:
            bar.total = status.total_instances
            bar.n = status.processed_instances
            bar.refresh()

        final = client.wait_for_reindex(operation_id, on_status=show)
        bar.close()
        _print_status(final)
        return 0


def peers_command(args: argparse.Namespace) -> int:
    """List, add or remove the DIMSE peers C-MOVE may send to."""
    with connect(args) as client:
        if args.action == "list":
            for peer in client.dimse_peers():
                print(f"{peer.name} {peer.ae_title}@{peer.host}:{peer.port} {peer.source}")
            return 0
        if args.action == "remove":
            client.remove_dimse_peer(args.name)
            return 0
        where, colon, port = args.address.rpartition(":")
        title, at, host = where.rpartition("@")
        if not (colon and at and port.isdigit()):
            print(f"error: {args.address!r} is not AE@HOST:PORT", file=sys.stderr)
            return 2
        peer = client.add_dimse_peer(args.name, title, host, int(port))
        print(f"{peer.name} {peer.ae_title}@{peer.host}:{peer.port} {peer.source}")
        return 0


def _print_status(status: ReindexStatus) -> None:
    state = "done" if status.done else "running"
    print(
        f"{status.operation_id}: {state}, "
        f"{status.processed_instances} of {status.total_instances} instances"
    )


# What gRPC says when no server listens at an address (or the address names no host).
_NOBODY_THERE = ("Connection refused", "DNS resolution failed", "No route to host", "Timeout")


def _explain(error: DicomRpcError, args: argparse.Namespace) -> str:
    """The error, and for a server that cannot be reached, what that means."""
    server = getattr(args, "server", "")
    if error.code != grpc.StatusCode.UNAVAILABLE or "failed to connect" not in error.message:
        return str(error)
    cause = error.message.rpartition(": ")[2] or "no connection"
    if any(sign in error.message for sign in _NOBODY_THERE):
        return (
            f"UNAVAILABLE: nothing answers at {server} ({cause}); is the archive running there? "
            "(--server HOST:PORT, env DICOMRPC_SERVER)"
        )
    return (
        f"UNAVAILABLE: {server} ended the connection as it was set up ({cause}); with TLS, "
        "check --tls-ca, and whether the server asks for a client certificate (--tls-cert, "
        "--tls-key); without, whether it serves TLS (--tls)"
    )


# The commands that run the archive itself, by the module whose ``run(args)`` serves each. They
# need the server's packages (``pip install 'dicomrpc[server]'``); the SDK's commands do not.
SERVER_COMMANDS = {
    "serve": "dicomrpc_server.main",
    "rebuild-index": "dicomrpc_server.rebuild",
    "migrate": "dicomrpc_server.migrate",
    "backup": "dicomrpc_server.lifecycle.backup",
    "restore": "dicomrpc_server.lifecycle.restore",
    "viewer": "dicomrpc_server.viewer.command",
}


def _server_command(args: argparse.Namespace) -> int:
    """Run a server command, or say which install it needs when the server's packages are absent.

    ``pip install dicomrpc`` is the SDK and this command line without the archive's index,
    codecs and HTTP server; its server commands answer with the one line that installs them
    rather than an import traceback.
    """
    try:
        module = importlib.import_module(SERVER_COMMANDS[args.command])
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] in ("dicomrpc", "dicomrpc_server"):
            raise
        print(
            f"dicomrpc {args.command}: the archive server's packages are not installed "
            f"(no module {error.name!r}); install them with: pip install 'dicomrpc[server]'",
            file=sys.stderr,
        )
        return 2
    run: Callable[[argparse.Namespace], int] = module.run
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    args = _parser().parse_args(argv)
    if args.command in SERVER_COMMANDS:
        return _server_command(args)
    commands = {
        "store": store_command,
        "retrieve": retrieve_command,
        "frames": frames_command,
        "render": render_command,
        "metadata": metadata_command,
        "delete": delete_command,
        "feed": feed_command,
        "search": search_command,
        "query-tags": query_tags_command,
        "peers": peers_command,
        "workitem": workitem_command,
        "api-key": api_key_command,
    }
    try:
        code = commands[args.command](args)
        sys.stdout.flush()  # here, so that a reader gone early is caught below
        return code
    except DicomRpcError as error:
        print(f"dicomrpc {args.command}: {_explain(error, args)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``dicomrpc feed | head``): what is left has nowhere to go.
        # Python flushes standard output once more at exit; point it at /dev/null first, so
        # that the flush does not fail again (the recipe of the signal module's docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a pipeline's early reader


if __name__ == "__main__":
    sys.exit(main())
