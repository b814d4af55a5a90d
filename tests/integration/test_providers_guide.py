"""docs/providers.md, run as written (a CPU worker here): the operator's provider and
worker key, the worker's config with mTLS to the broker and a price sheet, the worker
started, listed in the offers with those prices, a paid job, the payout, the systemd
unit, and a graceful stop; against a broker serving mTLS on certificates made by
docs/certificates.md's recipe."""

from __future__ import annotations

import os
import re
import shlex

from common.files import write_secret

from . import doc_blocks
from .broker_process import ROOT, free_port
from .test_certificates import make_certificates, recipe_pki
from .test_tls import TlsBroker

GUIDE = ROOT / "docs" / "providers.md"


def test_the_providers_guide_runs_as_written(tmp_path):
    steps = doc_blocks.shell_steps(GUIDE, {0: "installs packages", 8: "systemd",
                                           9: "NVIDIA GPU"})
    certs = tmp_path / "certs"
    make_certificates(certs)
    broker = TlsBroker(tmp_path / "data", recipe_pki(certs), mtls=True).start()
    try:
        agent_key_file = tmp_path / "agent.key"
        write_secret(agent_key_file, broker.credentials["agent_api_key"].encode())
        port = free_port()
        provider_dir = tmp_path / "provider dir"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BROKER_", "WORKER_"))}
        env.update(BROKER=f"localhost:{broker.port}", AGENTS_LISTEN=f"127.0.0.1:{port}",
                   AGENTS_ENDPOINT=f"localhost:{port}",
                   METRICS_LISTEN=f"127.0.0.1:{free_port()}", CERTS=str(certs),
                   PROVIDER_DIR=str(provider_dir),
                   ADMIN_KEY_FILE=str(broker.data_dir / "admin.key"),
                   AGENT_KEY_FILE=str(agent_key_file))
        doc_blocks.run(steps, cwd=ROOT, env=env, timeout=400)
    finally:
        broker.stop()
    worker_log = (provider_dir / "worker.log").read_text() if provider_dir.exists() else ""
    assert not [s for s in steps if s.rc], doc_blocks.failures(steps) + worker_log

    def only(needle: str) -> doc_blocks.Step:
        return doc_blocks.only(steps, needle)

    provider_id = re.fullmatch(r"provider (prv_\w+)\n",
                               only('echo "provider $PROVIDER_ID"').output)[1]
    key_file = provider_dir / "worker-api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.read_text().strip()

    shown = only("worker config show").output
    assert f'broker = "localhost:{broker.port}"' in shown
    assert "gpu_second_price = 1200" in shown and "output_tokens_1k_price = 800" in shown

    capabilities = only('echo "$CAPABILITIES"').json()[0]
    worker_id = capabilities["worker_id"]
    assert capabilities["capabilities"]["resource_class"] == "cpu"  # no GPU here

    offers = only("ListOffers").json()[0]["offers"]
    ours = [o for o in offers if o["worker_id"] == worker_id]
    assert [o["endpoint"] for o in ours] == [f"localhost:{port}"]
    assert ours[0]["prices"]["gpu_second_price"] == "1200"

    events = only("WorkerService/Execute").json()
    result = events[-1]["result"]
    assert result["status"] == "JOB_STATUS_COMPLETED"
    charged = int(result["receipt"]["charged"])
    assert charged > 0
    payouts = only("GetPayoutStatement").json()[0]["statement"]
    assert payouts["provider_id"] == provider_id
    assert sum(int(p["payout"]) + int(p.get("platform_fee", 0))
               for p in payouts["periods"]) == charged

    # the unit runs the very command the guide started by hand
    unit = (provider_dir / "compute-worker.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)[1]
    serve = next(s for s in steps if s.command.startswith(".venv/bin/worker serve"))
    started = shlex.split(serve.command.split(">>")[0])
    started = [str(ROOT / started[0]), *started[1:]]
    started[-1] = started[-1].replace("$PROVIDER_DIR", str(provider_dir))
    assert shlex.split(exec_start) == started
    assert "deregistered" in worker_log or "draining" in worker_log, worker_log
