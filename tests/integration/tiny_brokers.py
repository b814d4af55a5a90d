"""Tiny stand-ins for several brokers, in a process of their own, that say which one
answered: broker number n (1, 2, 3, ... in the order of the ports printed) answers
ListOffers with platform_fee_bps = n and no offers, and GetBalance with the account
"tiny-n". Enough to see which broker of a list a client's channel picked.

    python -m tests.integration.tiny_brokers 3    # prints "ports 41231,41232,41233"

It serves until its stdin closes.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

from broker.v1 import resources_pb2 as res_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import wallet_service_pb2_grpc as wallet_grpc
from broker.v1 import worker_registry_service_pb2 as registry_pb
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc
from common.targets import SERVER_PING_POLICY


class Registry(registry_grpc.WorkerRegistryServiceServicer):
    def __init__(self, number: int):
        self.number = number

    def ListOffers(self, request, context):
        return registry_pb.ListOffersResponse(platform_fee_bps=self.number)


class Wallets(wallet_grpc.WalletServiceServicer):
    def __init__(self, number: int):
        self.number = number

    def GetBalance(self, request, context):
        return wallet_pb.GetBalanceResponse(account_id=f"tiny-{self.number}",
                                            balance=res_pb.Balance())


def main(count: int) -> int:
    servers, ports = [], []
    for number in range(1, count + 1):
        server = grpc.server(futures.ThreadPoolExecutor(4), options=SERVER_PING_POLICY)
        registry_grpc.add_WorkerRegistryServiceServicer_to_server(Registry(number), server)
        wallet_grpc.add_WalletServiceServicer_to_server(Wallets(number), server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))  # the kernel picks: no race
        server.start()
        servers.append(server)
    print("ports " + ",".join(map(str, ports)), flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)
    for server in servers:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
