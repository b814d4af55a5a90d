"""docs/certificates.md, run as written: a CA, broker, worker and client certificates
made with openssl; then a broker serving mTLS on them accepts a client with the
client certificate and refuses one without."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from broker.client import BrokerClient, BrokerClientError

from . import doc_blocks
from .broker_process import ROOT
from .test_grpcurl import find_grpcurl
from .test_tls import Pki, TlsBroker

GUIDE = ROOT / "docs" / "certificates.md"


def make_certificates(certs: Path) -> list[doc_blocks.Step]:
    """Run the recipe into `certs`; every step must succeed."""
    steps = doc_blocks.shell_steps(GUIDE, {})
    env = {**os.environ, "CERTS": str(certs)}
    doc_blocks.run(steps, cwd=ROOT, env=env, timeout=120)
    assert not [s for s in steps if s.rc], doc_blocks.failures(steps)
    return steps


def recipe_pki(certs: Path) -> Pki:
    pair = {name: (certs / f"{name}.pem", certs / f"{name}.key")
            for name in ("broker", "worker", "client")}
    return Pki(certs / "ca.pem", pair["broker"], pair["client"], pair["worker"],
               other_ca=certs / "ca.pem", stranger=pair["client"])


def test_the_recipe_makes_certificates_a_broker_serves_mtls_with(tmp_path):
    certs = tmp_path / "certs"
    steps = make_certificates(certs)
    verified = doc_blocks.only(steps, "openssl verify").output.splitlines()
    assert verified == [f"{certs}/{name}.pem: OK" for name in ("broker", "worker", "client")]
    assert certs.stat().st_mode & 0o777 == 0o700
    for key in ("ca", "broker", "worker", "client"):
        assert (certs / f"{key}.key").stat().st_mode & 0o777 == 0o600, key
    assert sorted(p.name for p in certs.iterdir() if p.suffix in (".csr", ".ext")) == []

    broker = TlsBroker(tmp_path / "data", recipe_pki(certs), mtls=True).start()
    try:
        key = broker.credentials["agent_api_key"]
        target = f"localhost:{broker.port}"  # the name in the broker's certificate
        with BrokerClient(target, key, ca=str(certs / "ca.pem"),
                          client_cert=str(certs / "client.pem"),
                          client_key=str(certs / "client.key")) as agent:
            assert agent.balance().posted == 5_000_000
        with BrokerClient(target, key, ca=str(certs / "ca.pem"), retries=0) as stranger, \
                pytest.raises(BrokerClientError) as refused:
            stranger.balance()
        assert refused.value.code.name == "UNAVAILABLE"
        listed = subprocess.run(
            [find_grpcurl(), "-cacert", str(certs / "ca.pem"), "-cert",
             str(certs / "worker.pem"), "-key", str(certs / "worker.key"), target, "list"],
            capture_output=True, text=True, timeout=30)
        assert "broker.v1.WalletService" in listed.stdout.split(), listed.stderr
    finally:
        broker.stop()
