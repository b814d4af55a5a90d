"""`make demo`: an agent buys one `generate` job from the local worker.

list offers -> authorize -> execute (streamed tokens) -> receipt -> balances before/after.
Run `make run` in another terminal first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from broker.client import BrokerClient
from worker.v1 import worker_service_pb2 as wpb
from worker.v1 import worker_service_pb2_grpc as wpb_grpc


def fmt(balance) -> str:
    return (f"posted {balance.posted:>10,}  pending {balance.pending:>8,}  "
            f"available {balance.available:>10,}  micro-credits")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", default="127.0.0.1:50051")
    parser.add_argument("--credentials", default="var/demo-credentials.json")
    parser.add_argument("--prompt", default="The cheapest GPU is ")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    credentials = json.loads(Path(args.credentials).read_text())

    owner = BrokerClient(args.broker, credentials["owner_api_key"])
    with BrokerClient(args.broker, credentials["agent_api_key"]) as agent, owner:
        print(f"wallet before:   {fmt(agent.balance())}")
        print(f"treasury before: {fmt(owner.balance())}")
        offers = agent.list_offers(model="tiny-lm")
        if not offers:
            print("no live worker offers tiny-lm; is `make run` running?", file=sys.stderr)
            return 1
        offer = offers[0]
        p = offer.prices
        print(f"offer: worker {offer.worker_id} at {offer.endpoint} "
              f"({offer.capabilities.resource_class}): {p.gpu_second_price}/GPU-s, "
              f"{p.input_tokens_1k_price}/1k in, {p.output_tokens_1k_price}/1k out, "
              f"{p.call_price}/call")
        auth = agent.authorize(200_000, model="tiny-lm", worker_id=offer.worker_id,
                               ttl_seconds=120)
        print(f"authorized {auth.amount:,} (hold {auth.authorization_id})")

        with grpc.insecure_channel(offer.endpoint) as channel:
            stub = wpb_grpc.WorkerServiceStub(channel)
            job = wpb.Job(generate=wpb.GenerateJob(model="tiny-lm", prompt=args.prompt,
                                                   max_new_tokens=args.tokens))
            print(f"\n{args.prompt}", end="", flush=True)
            result = None
            for event in stub.Execute(wpb.ExecuteRequest(voucher=auth.voucher, job=job),
                                      timeout=120):
                kind = event.WhichOneof("kind")
                if kind == "output":
                    print(event.output.text, end="", flush=True)
                elif kind == "result":
                    result = event.result
            print("\n")
        if result is None:
            print("the worker ended without a result", file=sys.stderr)
            return 1
        receipt = agent.get_receipt(auth.authorization_id)
        u = receipt.usage
        print(f"job {wpb.JobStatus.Name(result.status)}: {u.input_tokens} tokens in, "
              f"{u.output_tokens} out, {u.gpu_ms} ms compute, {u.calls} call")
        print(f"receipt {receipt.receipt_id}: held {receipt.held:,}, charged "
              f"{receipt.charged:,} (worker {receipt.worker_payout:,} + fee "
              f"{receipt.platform_fee:,}), released {receipt.released:,}")
        print(f"wallet after:    {fmt(agent.balance())}  (refilled to its target)")
        print(f"treasury after:  {fmt(owner.balance())}  (paid the refill)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
