"""TLS and mutual TLS with real broker and worker processes, with certificates made
here: a CA, a server certificate for 127.0.0.1, client certificates for the agent and
the worker, and a stranger's CA and certificate. A whole cycle runs over mTLS (agent
to broker, worker to broker, agent to worker); plaintext clients, clients without a
certificate or with one from another CA are refused; grpcurl lists the services;
bad TLS files stop `broker serve` and `worker serve` with one line and exit status 2."""

import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.client import BrokerClient, BrokerClientError
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import admin_service_pb2_grpc as admin_grpc
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc
from common.files import write_secret
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .broker_process import ROOT, BrokerProcess
from .conftest import agents_copy, bearer, generate_job
from .test_grpcurl import SERVICES, find_grpcurl
from .worker_process import SERVICE, WorkerProcess

# -- certificates -------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """A CA that writes what it issues as PEM files (keys with mode 0600)."""

    def __init__(self, name: str, directory: Path):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._builder(_name(name), _name(name), self.key.public_key()) \
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True) \
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False),
                critical=True) \
            .sign(self.key, hashes.SHA256())
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1)))

    def issue(self, name: str, *, server: bool = False) -> tuple[Path, Path]:
        """(certificate file, key file) for a server on 127.0.0.1 or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(name), self.cert.subject, key.public_key()) \
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_secret(key_path, _pem(key))
        return cert_path, key_path


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    agent: tuple[Path, Path]
    worker: tuple[Path, Path]
    other_ca: Path
    stranger: tuple[Path, Path]  # a client certificate from the other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = Authority("ca", directory), Authority("other-ca", directory)
    return Pki(ca.path, ca.issue("server", server=True), ca.issue("agent"), ca.issue("worker"),
               other.path, other.issue("stranger"))


def credentials(ca: Path, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    cert, key = client or (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None)


def secure(target: str, creds: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(target, creds)


# -- processes on TLS ----------------------------------------------------------------------


class TlsBroker(BrokerProcess):
    def __init__(self, data_dir: Path, pki: Pki, *, mtls: bool):
        args = ["--tls-cert", pki.server[0], "--tls-key", pki.server[1]]
        if mtls:
            args += ["--tls-client-ca", pki.ca]
        super().__init__(data_dir, extra_args=tuple(map(str, args)))
        self.creds = credentials(pki.ca, pki.agent)

    def _serving(self) -> bool:
        try:
            with secure(self.target, self.creds) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


class TlsWorker(WorkerProcess):
    """A worker on mTLS towards agents and towards the broker."""

    def __init__(self, broker: TlsBroker, state_dir: Path, pki: Pki):
        creds = broker.credentials
        super().__init__(broker.target, state_dir, creds["worker_api_key"],
                         creds["agent_api_key"])
        self.pki = pki
        self.creds = credentials(pki.ca, pki.agent)

    def command(self) -> list[str]:
        p = self.pki
        return [*super().command(), *map(str, [
            "--tls-cert", p.server[0], "--tls-key", p.server[1], "--tls-client-ca", p.ca,
            "--broker-ca", p.ca, "--broker-client-cert", p.worker[0],
            "--broker-client-key", p.worker[1]])]

    def channel(self) -> grpc.Channel:
        return secure(self.target, self.creds)

    def offered_ids(self) -> set[str]:
        try:
            with secure(self.broker_target, self.creds) as channel:
                reply = registry_grpc.WorkerRegistryServiceStub(channel).ListOffers(
                    registry_pb.ListOffersRequest(), timeout=2, metadata=bearer(self.offers_key))
                return {offer.worker_id for offer in reply.offers}
        except grpc.RpcError:
            return set()


def refused(target: str, channel: grpc.Channel, key: str) -> None:
    """A call on `channel` never reaches the service: the handshake fails."""
    with channel, pytest.raises(grpc.RpcError) as caught:
        registry_grpc.WorkerRegistryServiceStub(channel).ListOffers(
            registry_pb.ListOffersRequest(), timeout=5, metadata=bearer(key))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value


def grpcurl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # From an empty directory: only reflection, no proto files to fall back on.
    return subprocess.run([find_grpcurl(), *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd)


def check_no_key_in(log: str, pki: Pki) -> None:
    assert "PRIVATE KEY" not in log
    for _, key in (pki.server, pki.worker):
        body = key.read_text().splitlines()[1]
        assert body not in log


# -- tests ---------------------------------------------------------------------------------


def test_mtls_cycle_agent_broker_worker(tmp_path, pki):
    broker = TlsBroker(tmp_path / "broker", pki, mtls=True).start()
    worker = None
    try:
        creds = broker.credentials
        worker = TlsWorker(broker, tmp_path / "worker", pki).start()  # registered over mTLS
        agent = BrokerClient(broker.target, creds["agent_api_key"], ca=str(pki.ca),
                             client_cert=str(pki.agent[0]), client_key=str(pki.agent[1]))
        with agent:
            assert worker.worker_id in {o.worker_id for o in agent.list_offers()}
            auth = agent.authorize(500_000, worker_id=worker.worker_id, ttl_seconds=60)
            with secure(worker.target, credentials(pki.ca, pki.agent)) as channel:
                events = list(worker_grpc.WorkerServiceStub(channel).Execute(
                    worker_pb.ExecuteRequest(voucher=auth.voucher,
                                             job=generate_job(max_new_tokens=4)), timeout=60))
            result = events[-1].result
            assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
            assert result.receipt.outcome == "FINISHED" and result.receipt.charged > 0
            assert agent.get_receipt(auth.authorization_id) == agents_copy(
                result.receipt, auth)
            assert agent.balance().pending == 0

            # Refused at the handshake: plaintext, no client certificate, a client
            # certificate from another CA, and a client that does not trust the server.
            key = creds["agent_api_key"]
            refused(broker.target, grpc.insecure_channel(broker.target), key)
            refused(broker.target, secure(broker.target, credentials(pki.ca)), key)
            refused(broker.target, secure(broker.target, credentials(pki.ca, pki.stranger)),
                    key)
            refused(broker.target, secure(broker.target, credentials(pki.other_ca,
                                                                     pki.agent)), key)
            with BrokerClient(broker.target, key, ca=str(pki.ca), retries=0) as no_cert, \
                    pytest.raises(BrokerClientError) as caught:
                no_cert.balance()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            # The worker's agent-facing server too: nothing is redeemed.
            late = agent.authorize(100_000, worker_id=worker.worker_id, ttl_seconds=60)
            for channel in (grpc.insecure_channel(worker.target),
                            secure(worker.target, credentials(pki.ca, pki.stranger))):
                with channel, pytest.raises(grpc.RpcError) as caught:
                    list(worker_grpc.WorkerServiceStub(channel).Execute(
                        worker_pb.ExecuteRequest(voucher=late.voucher, job=generate_job()),
                        timeout=10))
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert agent.get_authorization(late.authorization_id).state == \
                auth_pb.AUTHORIZATION_STATE_HELD
            agent.cancel(late.authorization_id)

        with secure(broker.target, credentials(pki.ca, pki.agent)) as channel:
            summary = admin_grpc.AdminServiceStub(channel).GetLedgerSummary(
                admin_pb.GetLedgerSummaryRequest(), metadata=bearer(creds["admin_api_key"]),
                timeout=10)
        assert list(summary.violations) == []

        # grpcurl over mTLS lists both servers' services; without a certificate it cannot.
        tls_args = ["-cacert", str(pki.ca), "-cert", str(pki.agent[0]),
                    "-key", str(pki.agent[1])]
        listed = grpcurl(*tls_args, broker.target, "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) >= SERVICES | {"grpc.health.v1.Health"}
        listed = grpcurl(*tls_args, worker.target, "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert SERVICE in listed.stdout.split()
        assert grpcurl("-cacert", str(pki.ca), broker.target, "list",
                       cwd=tmp_path).returncode != 0

        assert worker.stop() == 0
        assert broker.stop() == 0
        assert "TLS, client certificates required" in broker.log()
        assert "TLS, client certificates required" in worker.log()
        check_no_key_in(broker.log() + worker.log(), pki)
    finally:
        if worker is not None and worker.alive():
            worker.kill()
        broker.stop()


def test_tls_without_client_certificates(tmp_path, pki):
    broker = TlsBroker(tmp_path / "broker", pki, mtls=False).start()
    try:
        key = broker.credentials["agent_api_key"]
        with BrokerClient(broker.target, key, ca=str(pki.ca)) as agent:
            assert agent.balance().available > 0
        refused(broker.target, grpc.insecure_channel(broker.target), key)
        refused(broker.target, secure(broker.target, credentials(pki.other_ca)), key)
        listed = grpcurl("-cacert", str(pki.ca), broker.target, "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) >= SERVICES
        assert grpcurl("-plaintext", broker.target, "list", cwd=tmp_path).returncode != 0
    finally:
        assert broker.stop() == 0
    assert "(TLS)" in broker.log()


# -- refusing to start -----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_bad_tls_files_stop_the_broker_with_one_line(tmp_path, pki):
    cert, key = map(str, pki.server)
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.server[1].read_bytes())
    loose.chmod(0o644)
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(pki.server[1].read_bytes(), None)
    write_secret(encrypted, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    data_dir = tmp_path / "data"
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", key],
         "cannot read the certificate"),
        (["--tls-cert", cert, "--tls-key", str(loose)], "chmod 600"),
        (["--tls-cert", cert, "--tls-key", str(pki.agent[1])], "matching key"),
        (["--tls-cert", cert, "--tls-key", str(encrypted)], "encrypted"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(not_pem)],
         "holds no PEM certificate"),
        (["--tls-client-ca", str(pki.ca)], "needs tls.cert and tls.key"),
    ]
    for flags, message in cases:
        done = run_cli("-m", "broker.cli", "serve", "--data-dir", str(data_dir), "--demo",
                       *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "PRIVATE KEY" not in done.stdout + done.stderr
    assert not data_dir.exists()  # refused before anything was created


def test_bad_tls_files_stop_the_worker_with_one_line(tmp_path, pki):
    key_file = tmp_path / "api-key"
    write_secret(key_file, b"not-checked-before-tls")
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.server[1].read_bytes())
    loose.chmod(0o640)
    cases = [
        (["--broker-ca", str(tmp_path / "missing-ca.pem")], "cannot read the CA"),
        (["--broker-ca", str(pki.ca), "--broker-client-cert", str(pki.worker[0])],
         "must be set together"),
        (["--tls-cert", str(pki.server[0]), "--tls-key", str(loose)], "chmod 600"),
    ]
    for flags, message in cases:
        done = run_cli("-m", "worker.cli", "serve", "--api-key-file", str(key_file),
                       "--state-dir", str(tmp_path / "state"), *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "state").exists()
