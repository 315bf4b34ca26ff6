"""Generate the Python code, gRPC stubs and mypy stubs from the .proto contracts.

``python proto/generate.py`` writes into the source tree (``client/`` for the public API,
``server/`` for the index records); ``python proto/generate.py OUT`` writes the same files under
OUT instead, which is how the drift test compares the checked-in code with a fresh generation.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
# mypy-protobuf's plugins are installed beside the interpreter that runs this script.
BIN = Path(sys.executable).parent

# (proto search root, file relative to it, output root)
TARGETS: list[tuple[Path, str, Path]] = [
    *(
        (ROOT / "proto", f"dicomrpc/v1/{p.name}", ROOT / "client")
        for p in sorted((ROOT / "proto" / "dicomrpc" / "v1").glob("*.proto"))
    ),
    (ROOT / "server", "dicomrpc_server/storage/records.proto", ROOT / "server"),
]


def generate(out_override: Path | None = None) -> list[Path]:
    """Run protoc for every target; return the files written."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    written: list[Path] = []
    for include, rel, out_root in TARGETS:
        out = out_override / out_root.relative_to(ROOT) if out_override else out_root
        out.mkdir(parents=True, exist_ok=True)
        has_service = "service " in (include / rel).read_text()
        args = [
            "protoc",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"-I{ROOT / 'proto'}",
            f"-I{ROOT / 'server'}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--mypy_out={out}",
        ]
        if has_service:
            args += [f"--grpc_python_out={out}", f"--mypy_grpc_out={out}"]
        if protoc.main([*args, rel]) != 0:
            raise RuntimeError(f"protoc failed on {rel}")
        stem = rel.removesuffix(".proto")
        suffixes = ["_pb2.py", "_pb2.pyi"] + (
            ["_pb2_grpc.py", "_pb2_grpc.pyi"] if has_service else []
        )
        written += [out / f"{stem}{s}" for s in suffixes]
    return written


if __name__ == "__main__":
    generate(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None)
