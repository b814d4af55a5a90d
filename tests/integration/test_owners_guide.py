"""docs/owners.md, run as written: `broker init`, a broker in the background, an owner
with a credited treasury, owner and agent keys, a wallet with its policy, a receipt
key, spend and statements, an approval, freezing, shutdown and the offline audit; on
free ports and a fresh directory, each answer checked."""

from __future__ import annotations

import os
import re

from . import doc_blocks
from .broker_process import ROOT, free_port

GUIDE = ROOT / "docs" / "owners.md"


def test_the_owners_guide_runs_as_written(tmp_path):
    steps = doc_blocks.shell_steps(GUIDE, {0: "installs packages"})
    deploy = tmp_path / "deploy dir"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "WORKER_"))}
    env.update(LISTEN=f"127.0.0.1:{free_port()}", METRICS_LISTEN=f"127.0.0.1:{free_port()}",
               DEPLOY=str(deploy))
    doc_blocks.run(steps, cwd=ROOT, env=env, timeout=300)

    def only(needle: str) -> doc_blocks.Step:
        return doc_blocks.only(steps, needle)

    frozen = only('-format-error -d \'{"amount": "100000"}\'')
    assert [s for s in steps if s.rc] == [frozen], doc_blocks.failures(steps)
    reason = next(d for d in frozen.json()[0]["details"] if "ErrorInfo" in d["@type"])
    assert reason["reason"] == "WALLET_FROZEN"

    # init: the data directory where BROKER_DATA_DIR defaults to, keys in 0600 files
    assert (deploy / "data").stat().st_mode & 0o777 == 0o700
    for name in ("admin.key", "owner.key", "agent.key", "receipt.key"):
        assert (deploy / name).stat().st_mode & 0o777 == 0o600, name
        assert (deploy / name).read_text().strip(), name
    health = '.venv/bin/grpcurl -plaintext "$LISTEN" grpc.health.v1.Health/Check'
    assert only(health).json() == [{"status": "SERVING"}]

    owner_id = re.fullmatch(r"owner (own_\w+)\n", only('echo "owner $OWNER_ID"').output)[1]
    credit = only("CreditTreasury").json()[0]
    assert credit["treasury_balance"]["posted"] == "100000000"
    wallet_id = re.fullmatch(r"wallet (wal_\w+)\n", only('echo "wallet $WALLET_ID"').output)[1]
    funded = only("FundWallet").json()[0]
    assert funded["wallet_balance"]["posted"] == "5000000"
    policy = only("SetSpendPolicy").json()[0]["policy"]
    assert (policy["wallet_id"], policy["refills"]["daily_cap"],
            policy["approvals"]["threshold"]) == (wallet_id, "10000000", "1000000")
    assert only("RegisterReceiptKey").json()[0]["receipt_key"]["key_id"].startswith("rk_")

    # spend: the hold counts at once, in GetSpendStatus, broker status and the statement
    small = only('echo "$SMALL"').json()[0]["authorization"]
    assert (small["wallet_id"], small["state"]) == (wallet_id, "AUTHORIZATION_STATE_HELD")
    spend = only("GetSpendStatus").json()[0]["status"]
    assert (spend["wallet_id"], spend["spent_today"]) == (wallet_id, "500000")
    status = only("broker status").output
    assert "Treasury: 95.000000 credits posted" in status
    assert re.search(r"eval agent\s+5\.000000\s+0\.500000\s+0\.500000\s+0\.500000", status), \
        status
    statement = only("GetStatement").json()[0]["statement"]
    assert statement["owner_id"] == owner_id

    # approvals: pending without a voucher, then approved
    assert only('echo "$BIG" | field authorization.state').output.strip() == \
        "AUTHORIZATION_STATE_PENDING_APPROVAL"
    pending = only("ListApprovals").json()[0]["approvals"]
    assert [(a["wallet_id"], a["amount"], a["state"]) for a in pending] == \
        [(wallet_id, "1500000", "APPROVAL_STATE_PENDING")]
    approved = only("ApproveAuthorization").json()[0]
    assert approved["approval"]["state"] == "APPROVAL_STATE_APPROVED"

    # freezing, then both holds released, the broker stopped and the ledger audited
    assert only("FreezeWallet").json()[0]["wallet"]["frozen"] is True
    assert "frozen" not in only("UnfreezeWallet").json()[0]["wallet"]
    assert only("CancelAuthorization").output.split() == ["AUTHORIZATION_STATE_CANCELLED"] * 2
    assert only("broker audit").output.strip().endswith("ledger OK")
