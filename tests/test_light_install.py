"""The agent's install: the built wheel, installed into a fresh virtualenv with its
declared dependencies, gives the client, broker-mcp and the broker, and no torch, NVML
bindings or grpcio-tools (those are the `worker` and `dev` extras)."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pynvml", "grpc_tools")


def run(*cmd, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_without_the_workers_weight(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist",
        ROOT, cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("compute_broker-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    required = [line.split(":", 1)[1].strip() for line in metadata.decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in required}
    assert "mcp" in names and "grpcio" in names
    assert not names & {"torch", "nvidia-ml-py", "pynvml", "grpcio-tools", "numpy"}, names
    assert not [r for r in required if "==" in r], "runtime dependencies take ranges"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    run(python, "-m", "pip", "install", "-q", "--only-binary=:all:", wheel, cwd=tmp_path)
    # Run from tmp_path: the repository's own sources must not be on sys.path.
    probe = ("import importlib.util, sys\n"
             "import broker, broker.client, broker.daemon, broker.mcp.server\n"
             f"print(broker.__file__)\n"
             f"print([m for m in {HEAVY!r} if importlib.util.find_spec(m)])\n"
             f"print([m for m in {HEAVY!r} if m in sys.modules])\n")
    location, installed, imported = run(python, "-c", probe, cwd=tmp_path).splitlines()
    assert location.startswith(str(env_dir)), location
    assert (installed, imported) == ("[]", "[]")
    usage = run(bin_dir / "broker-mcp", "--help", cwd=tmp_path)
    assert "--api-key-file" in usage and "BROKER_MCP_API_KEY" in usage
    assert "--api-key " not in usage  # never a key on the command line (ps shows it)
    assert "serve" in run(bin_dir / "broker", "--help", cwd=tmp_path)
    # The worker itself says what it lacks.
    worker = subprocess.run([bin_dir / "worker", "serve"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert worker.returncode == 2, worker.stderr
    assert "needs torch: pip install 'compute-broker[worker]'" in worker.stderr
