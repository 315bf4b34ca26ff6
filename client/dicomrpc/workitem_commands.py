"""The ``dicomrpc workitem`` commands: create, get, update, claim, complete, cancel and more.

The others are ``request-cancel``, ``search`` and ``watch``. Data sets are DICOM JSON files,
or ``-`` for standard input. Results print as DICOM JSON or, for a search, as a table; a watch
prints one JSON object per event.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomrpc.client import Client
from dicomrpc.connection import connect
from dicomrpc.datasets import from_json_text, from_pydicom, keyword, to_json
from dicomrpc.v1 import dataset_pb2
from dicomrpc.workitem_templates import TEMPLATES, template_text
from dicomrpc.workitems import WorkitemResult

_COLUMNS = ["00080018", "00741000", "00741200", "00404005", "00100010", "00100020", "00741204"]


def add_parser(sub: Any, add_server: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``workitem`` and its subcommands to the command line's subparsers."""
    workitem = sub.add_parser("workitem", help="create, claim, complete, search or watch UPS")
    commands = workitem.add_subparsers(dest="action", required=True)

    create = commands.add_parser("create", help="create a SCHEDULED workitem")
    create.add_argument("dataset", help="DICOM JSON or DICOM file, or - for standard input")
    create.add_argument("--uid", default="", help="the workitem UID (default: generated)")
    create.add_argument(
        "--quiet", "-q", action="store_true", help="print the UID only (for W=$(...))"
    )

    template = commands.add_parser(
        "template", help="print a DICOM JSON data set to start from (no server needed)"
    )
    template.add_argument(
        "kind",
        choices=sorted(TEMPLATES),
        help="create: a SCHEDULED workitem; complete / cancel: what finishing it needs",
    )

    get = commands.add_parser("get", help="print a workitem as DICOM JSON")
    get.add_argument("uid")

    update = commands.add_parser("update", help="set attributes of a workitem")
    update.add_argument("uid")
    update.add_argument("dataset", help="DICOM JSON file, or - for standard input")
    update.add_argument("--transaction", default="", help="Transaction UID (IN PROGRESS)")

    claim = commands.add_parser("claim", help="claim a workitem; print its Transaction UID")
    claim.add_argument("uid")
    claim.add_argument("--transaction", default="", help="Transaction UID (default: generated)")

    for name, verb in (("complete", "complete"), ("cancel", "cancel")):
        finish = commands.add_parser(name, help=f"{verb} a claimed workitem")
        finish.add_argument("uid")
        finish.add_argument("--transaction", required=True, help="its Transaction UID")
        finish.add_argument("dataset", nargs="?", help="DICOM JSON to set first, or -")

    request = commands.add_parser("request-cancel", help="ask for a workitem to be canceled")
    request.add_argument("uid")
    request.add_argument("--reason", default="")
    request.add_argument("--contact-name", default="")
    request.add_argument("--contact-uri", default="")

    search = commands.add_parser("search", help="search workitems")
    search.add_argument("terms", nargs="*", help="KEY=VALUE match terms (keyword, tag or path)")
    search.add_argument("--fuzzy", action="store_true", help="fuzzy person-name matching")
    search.add_argument("--include", action="append", default=[], help="extra attribute, or all")
    search.add_argument("--limit", type=int, default=0, help="most results (100, at most 1000)")
    search.add_argument("--offset", type=int, default=0, help="results to skip")
    search.add_argument("--json", action="store_true", help="print DICOM JSON")

    watch = commands.add_parser("watch", help="print workitem events as JSON lines")
    watch.add_argument("terms", nargs="*", help="KEY=VALUE filter terms")
    watch.add_argument("--uid", default="", help="follow one workitem")
    watch.add_argument(
        "--since",
        type=int,
        default=None,
        help="replay the events after this sequence first (0: all, as feed --since 0); "
        "without it, new events only",
    )
    watch.add_argument("--count", type=int, default=0, help="stop after this many events")

    for parser in commands.choices.values():
        add_server(parser)


def _read(path: str) -> dataset_pb2.Dataset:
    """A workitem data set from DICOM JSON (a file, or ``-`` for standard input) or a DICOM file.

    A DICOM file (Part 10: ``DICM`` after the 128-byte preamble) is read with pydicom, as the
    SDK takes a pydicom data set; anything else is DICOM JSON (PS3.18 F.2).
    """
    try:
        if path == "-":  # bytes where standard input has them (a DICOM file may be piped)
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        else:
            data = Path(path).read_bytes()
        if data[128:132] == b"DICM":
            from io import BytesIO

            import pydicom

            return from_pydicom(pydicom.dcmread(BytesIO(data)))
        return from_json_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SystemExit(
            f"dicomrpc workitem: {path} is neither DICOM JSON (UTF-8 text) nor a DICOM file"
        ) from None
    except Exception as error:  # what the JSON or DICOM reader says is wrong with the file
        raise SystemExit(f"dicomrpc workitem: {path}: {error}") from None


def _terms(terms: list[str]) -> dict[str, str]:
    match = {}
    for term in terms:
        key, sep, value = term.partition("=")
        if not sep:
            raise SystemExit(f"dicomrpc workitem: {term!r} is not KEY=VALUE")
        match[key] = value
    return match


def _report(result: WorkitemResult) -> None:
    line = f"{result.workitem_uid} {result.state}".rstrip()
    if result.warning_status:
        line += f" (warning 0x{result.warning_status:04X}: {result.warning_message})"
    print(line)


def _cell(element: dict[str, Any] | None) -> str:
    if not element or "Value" not in element:
        return ""
    return "\\".join(
        str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v) for v in element["Value"]
    )


def workitem_command(args: argparse.Namespace) -> int:
    """Run one ``dicomrpc workitem`` subcommand."""
    if args.action == "template":
        sys.stdout.write(template_text(args.kind))
        return 0
    with connect(args) as client:
        w = client.workitems
        if args.action == "create":
            created = w.create(_read(args.dataset), args.uid)
            if args.quiet:
                print(created.workitem_uid)
            else:
                _report(created)
        elif args.action == "get":
            print(json.dumps(w.get(args.uid).as_json(), indent=1))
        elif args.action == "update":
            w.update(args.uid, _read(args.dataset), args.transaction)
            print(f"{args.uid} updated")
        elif args.action == "claim":
            print(w.claim(args.uid, args.transaction))
        elif args.action in ("complete", "cancel"):
            finish = w.complete if args.action == "complete" else w.cancel
            changes = _read(args.dataset) if args.dataset else None
            _report(finish(args.uid, args.transaction, changes))
        elif args.action == "request-cancel":
            _report(w.request_cancel(args.uid, args.reason, args.contact_name, args.contact_uri))
        elif args.action == "search":
            _search(client, args)
        else:
            _watch(client, args)
    return 0


def _search(client: Client, args: argparse.Namespace) -> None:
    results = client.workitems.search(
        _terms(args.terms),
        fuzzy=args.fuzzy,
        include=args.include,
        limit=args.limit,
        offset=args.offset,
    )
    rows = [to_json(r) for r in results.datasets]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    names = [keyword(c) or c for c in _COLUMNS]
    table = [names, *([_cell(row.get(c)) for c in _COLUMNS] for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} workitem{'s' if len(rows) != 1 else ''}")


def _watch(client: Client, args: argparse.Namespace) -> None:
    seen = 0
    with client.workitems.watch(args.uid, filter=_terms(args.terms), since=args.since) as events:
        try:
            for event in events:
                record = {
                    "sequence": event.sequence,
                    "type": event.type,
                    "workitem_uid": event.workitem_uid,
                    "state": event.state,
                    "time": event.time.isoformat(),
                    "event": to_json(event.dataset),
                }
                print(json.dumps(record), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
