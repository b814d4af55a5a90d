"""Generate the Python gRPC stubs from protos/, or check that the committed ones are fresh.

    python scripts/protos.py           # regenerate broker/v1 and worker/v1
    python scripts/protos.py --check   # exit 1 if the committed stubs differ
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto")
                   if p.relative_to(PROTOS).parts[0] != "google")
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", f"--pyi_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for package_dir in {p.parent for p in out.rglob("*_pb2.py")}:
        init = package_dir / "__init__.py"
        init.write_text('"""Generated from protos/; run `make proto`."""\n')


def generated_files(root: Path) -> set[Path]:
    found = set()
    for package in ("broker/v1", "worker/v1"):
        for path in (root / package).glob("*"):
            if path.name.endswith(GENERATED_SUFFIXES) or path.name == "__init__.py":
                found.add(path.relative_to(root))
    return found


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if not check:
            for rel in generated_files(ROOT) - generated_files(fresh):
                (ROOT / rel).unlink()
            for rel in generated_files(fresh):
                (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
                (ROOT / rel).write_bytes((fresh / rel).read_bytes())
            return 0
        want, have = generated_files(fresh), generated_files(ROOT)
        stale = sorted(str(p) for p in want ^ have)
        stale += sorted(str(p) for p in want & have
                        if not filecmp.cmp(fresh / p, ROOT / p, shallow=False))
        if stale:
            print("stale generated stubs (run `make proto`):", *stale, sep="\n  ")
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
