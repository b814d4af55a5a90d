"""Request generation for the fuzzer, driven by the protobuf descriptors.

`discover_rpcs()` walks `DESCRIPTOR.services_by_name` of every `*_pb2` module in
`broker.v1` and `worker.v1`, so a new RPC is fuzzed without touching this file.
`Generator` builds requests three ways:

- `message(descriptor)`: a random message, field by field from the descriptor:
  edge integers (int64 min/max, 2**62+1, -1, 0, ...), empty, huge, unicode and
  control-character strings, random bytes, unknown enum values, missing fields,
  nested messages, repeated fields, oneofs;
- `template(rpc)`: a realistic, valid request (ids, vouchers and tokens from the
  `Corpus` of what the servers answered), so that mutations reach deep code;
- `mutate(message)`: one to three random edits of any field path of a message.

Strings are drawn with their field name in mind: a `voucher` gets voucher-looking
tokens and mutations of real vouchers (flipped characters, truncations, swapped or
spliced parts, re-encoded claims), a `page_token` gets real and forged tokens, an
`*_id` gets known ids of every kind. `corrupt_wire()` breaks the encoding itself.
"""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
import random
import string
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from nacl.signing import SigningKey

FD = FieldDescriptor
PACKAGES = ("broker.v1", "worker.v1")
BROKER_MAX_MESSAGE = 64 * 1024  # broker/daemon.py MAX_MESSAGE_BYTES
WORKER_MAX_MESSAGE = 1 << 20  # worker/daemon.py max_receive_message_length
MAX_DEPTH = 4

# -- the RPCs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One method of one service, as the descriptors describe it."""

    package: str
    service: str  # full name, e.g. "broker.v1.WalletService"
    name: str
    input: Descriptor
    output: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def target(self) -> str:
        return "worker" if self.package == "worker.v1" else "broker"

    @property
    def max_message(self) -> int:
        return WORKER_MAX_MESSAGE if self.target == "worker" else BROKER_MAX_MESSAGE

    @property
    def mutating(self) -> bool:
        """May change broker state when accepted (AIP-155 request ids mark mutations;
        a metering stream and a worker job redeem vouchers)."""
        return ("request_id" in self.input.fields_by_name or self.client_streaming
                or (self.target == "worker" and self.server_streaming))

    def request_class(self) -> type[Message]:
        return message_class(self.input)

    def response_class(self) -> type[Message]:
        return message_class(self.output)


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def pb2_modules() -> Iterator[Any]:
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.name.endswith("_pb2"):
                yield importlib.import_module(f"{package}.{info.name}")


def discover_rpcs() -> list[Rpc]:
    rpcs = []
    for module in pb2_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rpcs.append(Rpc(module.DESCRIPTOR.package, service.full_name, method.name,
                                method.input_type, method.output_type,
                                method.client_streaming, method.server_streaming))
    return rpcs


# -- value pools ----------------------------------------------------------------------

INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}
EDGE_INTS = (0, 1, -1, 2, 50, 999, 1000, 1001, 4096, 4097, 65536, 86400, 86401,
             2**31 - 1, -(2**31), 2**31, 2**32, 2**53 + 1, 10**15, 10**15 + 1,
             4_611_686_018_427, 4_611_686_018_428, 10**17, 10**17 + 1,
             2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, -(2**63), -(2**62))
UNICODE = ("é", "日本語", "🚀", "\u200b", "\u202e", "\ufeff", "Ω≈ç√", "\U0010ffff", "ﬁ",
           "İ", "e\u0301", "\u00a0", "𝄞", "ß")
CONTROL = ("\x00", "\x01", "\n", "\r", "\t", "\x1b[31m", "\x7f", "\x85", "\u2028", "\x08")
INJECT = ("../../etc/passwd", "%s%s%n", "{0}{1}", "' OR '1'='1", "\\", "/", "//", "*", "%",
          "null", "None", "-1", "0", "NaN", "1e309", "${jndi:ldap://x}", "<script>", " ",
          "a/b", "\\u0000", "9" * 30)
ID_PREFIXES = ("wal_", "own_", "auth_", "ses_", "wrk_", "key_", "prv_", "rcpt_", "tr_", "vch_",
               "trs_", "pay_", "cbk_", "platform:", "cs_", "job_")
B64_ALPHABET = string.ascii_letters + string.digits + "-_"
MODELS = ("tiny-lm", "", "gpt-5", "tiny-lm ", "TINY-LM", "tiny-lm\x00")
HANDLERS = ("worker.runtime.example_handlers:echo", "worker.runtime.example_handlers:fail",
            "worker.runtime.example_handlers:nope", "os:system", "builtins:eval",
            "worker.runtime.example_handlers", ":echo", "a.b:c", "worker.runtime.jobs:JobSpec")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def unknown_field(number: int, size: int) -> bytes:
    """A length-delimited field the schema does not know (parsers keep and skip it)."""
    return _varint(number << 3 | 2) + _varint(size) + b"u" * size


# -- what the servers told us ---------------------------------------------------------


class Corpus:
    """Ids, vouchers and page tokens seen in responses, by field name. `fixed` holds the
    demo world's ids (they never age out)."""

    LIMIT = 40

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ids: dict[str, list[str]] = {}
        self.fixed: dict[str, list[str]] = {}
        self.vouchers: list[str] = []
        self.page_tokens: list[str] = []
        self.request_ids: deque[str] = deque(maxlen=64)

    def add(self, name: str, value: str, *, fixed: bool = False) -> None:
        if not value:
            return
        pool = (self.fixed if fixed else self.ids).setdefault(name, [])
        if value in pool:
            return
        pool.append(value)
        if len(pool) > self.LIMIT and not fixed:
            del pool[0]

    def add_voucher(self, token: str) -> None:
        if token and token not in self.vouchers:
            self.vouchers.append(token)
            del self.vouchers[:-self.LIMIT]

    def pick(self, name: str) -> str:
        pool = self.fixed.get(name, []) + self.ids.get(name, [])
        return self.rng.choice(pool) if pool else ""

    def any_id(self) -> str:
        names = [n for n in {*self.ids, *self.fixed} if n.endswith("_id")]
        return self.pick(self.rng.choice(names)) if names else ""

    def harvest(self, msg: Message) -> None:
        """Remember every id, voucher and page token in a response."""
        for field, value in msg.ListFields():
            if _is_map(field):
                continue  # labels: nothing a later request could reuse
            if field.type == FD.TYPE_MESSAGE:
                for item in (value if _repeated(field) else [value]):
                    self.harvest(item)
            elif field.type == FD.TYPE_STRING and not _repeated(field):
                if field.name.endswith("_id"):
                    self.add(field.name, value)
                elif field.name == "voucher":
                    self.add_voucher(value)
                elif field.name.endswith("page_token"):
                    self.page_tokens.append(value)
                    del self.page_tokens[:-self.LIMIT]


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == FD.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


# -- the generator --------------------------------------------------------------------


class Generator:
    def __init__(self, rng: random.Random, corpus: Corpus):
        self.rng = rng
        self.corpus = corpus
        self._forger = SigningKey(bytes(rng.getrandbits(8) for _ in range(32)))

    # -- whole messages ---------------------------------------------------------------

    def message(self, descriptor: Descriptor, depth: int = 0) -> Message:
        msg = message_class(descriptor)()
        self.fill(msg, depth)
        return msg

    def fill(self, msg: Message, depth: int = 0) -> None:
        desc = msg.DESCRIPTOR
        for oneof in desc.oneofs:
            if self.rng.random() < 0.85:
                self.set_field(msg, self.rng.choice(oneof.fields), depth)
        for field in desc.fields:
            if field.containing_oneof is None and self.rng.random() < 0.6:
                self.set_field(msg, field, depth)

    def set_field(self, msg: Message, field: FieldDescriptor, depth: int) -> None:
        rng = self.rng
        if _repeated(field):
            container = getattr(msg, field.name)
            count = rng.choice((0, 1, 1, 2, 3, 5)) if rng.random() < 0.95 \
                else rng.choice((64, 65, 200))
            for _ in range(count):
                if _is_map(field):
                    entry = field.message_type.fields_by_name
                    container[self.scalar(entry["key"])] = self.scalar(entry["value"])
                elif field.type == FD.TYPE_MESSAGE:
                    item = container.add()
                    if depth < MAX_DEPTH:
                        self.fill(item, depth + 1)
                else:
                    container.append(self.scalar(field))
        elif field.type == FD.TYPE_MESSAGE:
            sub = getattr(msg, field.name)
            if depth < MAX_DEPTH:
                self.fill(sub, depth + 1)
            sub.SetInParent()
        else:
            setattr(msg, field.name, self.scalar(field))

    # -- scalars ----------------------------------------------------------------------

    def scalar(self, field: FieldDescriptor) -> Any:
        kind = field.type
        if kind in INT_RANGES:
            return self.int_value(field)
        if kind == FD.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind == FD.TYPE_STRING:
            return self.string_value(field.name)
        if kind == FD.TYPE_BYTES:
            return self.bytes_value(field.name)
        if kind == FD.TYPE_ENUM:
            return self.enum_value(field)
        return self.rng.choice((0.0, -1.0, 1e308, float("nan"), float("inf"), 0.5))

    def int_value(self, field: FieldDescriptor) -> int:
        lo, hi = INT_RANGES[field.type]
        rng, name = self.rng, field.name
        r = rng.random()
        if r < 0.35:
            value = self._realistic_int(name)
        elif r < 0.75:
            value = rng.choice(EDGE_INTS)
        elif r < 0.9:
            value = rng.choice((1, -1)) * (2 ** rng.randint(0, 63) + rng.randint(-1, 1))
        else:
            value = rng.randint(lo, hi)
        return min(max(value, lo), hi)

    def _realistic_int(self, name: str) -> int:
        rng = self.rng
        if name in ("amount", "cap", "refill_target"):
            if rng.random() < 0.2:  # the largest amounts the broker accepts, and just above
                return rng.choice((2**62, 2**62 - 1, 2**62 + 1, 10**15, 10**15 + 1))
            return rng.randint(1, 100_000)
        if name == "seq":
            return rng.randint(0, 6)
        if name == "ttl_seconds":
            return rng.choice((0, 1, 900, 3600, 86_400, 86_401))
        if name == "page_size":
            return rng.choice((0, 1, 2, 3, 1000, 1001))
        if name == "max_new_tokens":
            return rng.choice((0, 1, 4, 8, 4096, 4097))
        if name.endswith("_price"):
            return rng.choice((0, 1, 50, 200, 600, 1000, 10**6))
        return rng.randint(0, 2000)

    def enum_value(self, field: FieldDescriptor) -> int:
        values = [v.number for v in field.enum_type.values]
        if self.rng.random() < 0.75:
            return self.rng.choice(values)
        return self.rng.choice((-1, max(values) + 1, 99, 2**31 - 1, -(2**31)))

    def bytes_value(self, name: str) -> bytes:
        rng = self.rng
        size = rng.choice((0, 1, 16, 31, 32, 33, 63, 64, 65, 1000)) if rng.random() < 0.8 \
            else rng.randint(0, 4000)
        if name == "input" and rng.random() < 0.6:
            return " ".join(rng.choice(("hello", "broker", "é", "\x00", "🚀", "word"))
                            for _ in range(rng.randint(0, 20))).encode()
        if rng.random() < 0.1:
            return b"\x00" * size
        return rng.randbytes(size)

    def string_value(self, name: str) -> str:
        rng = self.rng
        if rng.random() < 0.6:
            special = self._named_string(name)
            if special is not None:
                return special
        return self.generic_string()

    def _named_string(self, name: str) -> str | None:
        rng = self.rng
        if name == "voucher":
            return self.voucher()
        if name.endswith("page_token"):
            return self.page_token()
        if name == "request_id":
            return self.request_id()
        if name.endswith("_id"):
            r = rng.random()
            if r < 0.5:
                return self.corpus.pick(name) or self.corpus.any_id()
            if r < 0.7:
                return self.corpus.any_id()
            if r < 0.85:
                return self.mutate_string(self.corpus.pick(name) or rng.choice(ID_PREFIXES))
            return rng.choice(ID_PREFIXES) + rng.randbytes(8).hex()
        if name in ("model", "models"):
            return rng.choice(MODELS)
        if name == "resource_class":
            return self.corpus.pick("resource_class") or "cpu"
        if name == "handler":
            return rng.choice(HANDLERS)
        if name == "endpoint":
            return rng.choice(("127.0.0.1:7001", "localhost:0", "host:65536", "host:-1", ":80",
                               "127.0.0.1", "[::1]:7001", "a:b", "x" * 70 + ":1"))
        if name == "cache_scope":
            return "cs_" + rng.randbytes(16).hex()
        return None

    def generic_string(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.1:
            return ""
        if r < 0.3:
            return "".join(rng.choice(string.printable[:94]) for _ in range(rng.randint(1, 20)))
        if r < 0.4:
            return rng.choice(ID_PREFIXES) + rng.randbytes(rng.choice((4, 8, 12))).hex()
        if r < 0.5:
            return "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 8)))
        if r < 0.6:
            return "x" + "".join(rng.choice(CONTROL) for _ in range(rng.randint(1, 4)))
        if r < 0.72:
            return rng.choice("aé🚀/") * rng.choice((63, 64, 65, 99, 100, 101, 128, 256, 512, 600))
        if r < 0.75:
            return rng.choice("aé") * rng.choice((5000, 20_000))
        if r < 0.85:
            return rng.choice(INJECT)
        if r < 0.95:
            return self.mutate_string(self.corpus.any_id() or "x")
        return str(rng.choice(EDGE_INTS))

    def mutate_string(self, s: str) -> str:
        rng = self.rng
        if s.startswith("v1.") and rng.random() < 0.7:
            return self.mutate_voucher(s)
        op = rng.randrange(9)
        i = rng.randrange(len(s) + 1)
        if op == 0 and s:
            j = min(i, len(s) - 1)
            return s[:j] + rng.choice(B64_ALPHABET + "./=+ é\x00") + s[j + 1:]
        if op == 1:
            return s[:i]
        if op == 2:
            return s + rng.choice(("x", "/", "\x00", "é", " ", "/" + s, s))
        if op == 3:
            return s[:i] + rng.choice(UNICODE + CONTROL) + s[i:]
        if op == 4:
            return s.swapcase()
        if op == 5:
            return (s * (600 // max(1, len(s)) + 1))[: rng.choice((64, 65, 512, 600))]
        if op == 6:
            return " " + s + " "
        if op == 7:
            return s + "/" + rng.choice(("..", "", "x" * 600, "\U0010ffff"))
        return s[::-1]

    # -- request ids, page tokens, vouchers -------------------------------------------

    def request_id(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.6 or not self.corpus.request_ids:
            rid = uuid.uuid4().hex
        elif r < 0.8:
            rid = rng.choice(self.corpus.request_ids)  # a replay (or a reuse)
        else:
            rid = self.generic_string()
        self.corpus.request_ids.append(rid)
        return rid

    def page_token(self) -> str:
        rng = self.rng
        r = rng.random()
        tokens = self.corpus.page_tokens
        if r < 0.25 and tokens:
            return rng.choice(tokens)
        if r < 0.4 and tokens:
            return self.mutate_string(rng.choice(tokens))
        if r < 0.85:
            prefix = rng.choice((self.corpus.pick("wallet_id"), self.corpus.pick("owner_id"),
                                 self.corpus.any_id(), ""))
            tail = rng.choice(("", "0", "-1", "9" * 30, "9" * 600, " 1", "1_0", "x" * 600,
                               "\x00", "\uffff" * 300, "00000000000000000001", "é" * 300,
                               str(2**63), "z" * 200))
            key = rng.choice((prefix + "/" + tail, tail, prefix + tail))
            return b64e(key.encode())
        return self.generic_string()

    def voucher(self) -> str:
        rng = self.rng
        real = self.corpus.vouchers
        r = rng.random()
        if real and r < 0.1:
            return rng.choice(real)
        if real and r < 0.65:
            return self.mutate_voucher(rng.choice(real))
        if r < 0.9:
            return self.fake_voucher()
        return self.generic_string()

    def fake_voucher(self) -> str:
        rng = self.rng
        key_id = self.corpus.pick("key_id") or "k" + rng.randbytes(4).hex()
        claims = rng.choice((
            b64e(rng.randbytes(rng.randint(0, 200))),
            b64e(json.dumps(self._claims()).encode()),
            b64e(b"{}"), b64e(b"null"), b64e(b"[]"), "", "!!!", "a" * 5000))
        head = f"{rng.choice(('v1', 'v1', 'v2', 'V1', ''))}.{key_id}.{claims}"
        if rng.random() < 0.4:  # well formed, signed by a key the broker never issued
            return f"{head}.{b64e(self._forger.sign(head.encode()).signature)}"
        return f"{head}.{b64e(rng.randbytes(rng.choice((0, 63, 64, 65))))}"

    def _claims(self) -> dict:
        rng = self.rng
        edge = rng.choice(EDGE_INTS)
        return {"vid": rng.choice(("vch_" + rng.randbytes(12).hex(), edge, None, "")),
                "amt": rng.choice((edge, "1000", None, 1.5, [1])),
                "scope": rng.choice(({}, {"worker_id": self.corpus.pick("worker_id")}, [], "x")),
                "iat": rng.choice((0, edge)), "exp": rng.choice((2**62, edge, "never"))}

    def mutate_voucher(self, token: str) -> str:
        rng = self.rng
        parts = token.split(".")
        op = rng.randrange(12)
        if op == 0:  # flip one character
            i = rng.randrange(len(token))
            return token[:i] + rng.choice(B64_ALPHABET + ".=+/ é") + token[i + 1:]
        if op == 1:
            return token[:rng.randrange(len(token))]
        if op == 2 and len(parts) > 1:  # swap two parts
            i, j = rng.sample(range(len(parts)), 2)
            parts[i], parts[j] = parts[j], parts[i]
            return ".".join(parts)
        if op == 3 and self.corpus.vouchers and len(parts) == 4:  # splice with another
            other = rng.choice(self.corpus.vouchers).split(".")
            if len(other) == 4:
                i = rng.randrange(4)
                parts[i] = other[i]
            return ".".join(parts)
        if op == 4 and parts:
            parts[0] = rng.choice(("v2", "V1", "", "v1 ", "v0", "v1\x00", "v11"))
            return ".".join(parts)
        if op == 5 and len(parts) > 1:
            parts[1] = rng.choice((self.corpus.any_id(), "", "k" * 600, parts[1] + "x"))
            return ".".join(parts)
        if op == 6 and len(parts) == 4:  # re-encoded claims: the signature no longer covers them
            try:
                claims = json.loads(b64d(parts[2]))
            except ValueError:
                claims = {}
            if isinstance(claims, dict):
                claims[rng.choice(("amt", "exp", "vid", "scope", "iat", "extra"))] = rng.choice(
                    (2**62, -1, 0, 2**63, None, "x", {"worker_id": ""}, 10**400))
                claims.pop(rng.choice(("amt", "exp", "vid", "zzz")), None)
            parts[2] = b64e(json.dumps(claims).encode())
            return ".".join(parts)
        if op == 7 and len(parts) == 4:  # random bytes where the claims or signature go
            parts[rng.choice((2, 3))] = b64e(rng.randbytes(rng.randint(0, 96)))
            return ".".join(parts)
        if op == 8:
            return token + rng.choice(("=", "==", ".", ".x", " ", "\n", "é", token))
        if op == 9 and parts:
            del parts[rng.randrange(len(parts))]
            return ".".join(parts)
        if op == 10 and len(parts) == 4:  # our own signature over the real head
            head = ".".join(parts[:3])
            return f"{head}.{b64e(self._forger.sign(head.encode()).signature)}"
        return token.swapcase()

    # -- mutation of whole messages ---------------------------------------------------

    def mutate(self, msg: Message, rounds: int | None = None) -> Message:
        out = type(msg)()
        out.CopyFrom(msg)
        for _ in range(rounds or self.rng.choice((1, 1, 1, 2, 3))):
            slots = list(_slots(out, 0))
            if not slots:
                break
            parent, field = self.rng.choice(slots)
            self._mutate_slot(parent, field)
        return out

    def _mutate_slot(self, parent: Message, field: FieldDescriptor) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            parent.ClearField(field.name)
            return
        if _repeated(field):
            container = getattr(parent, field.name)
            if r < 0.3:
                parent.ClearField(field.name)
            elif field.type != FD.TYPE_MESSAGE and len(container) and r < 0.5:
                container.extend(list(container))
            else:
                self.set_field(parent, field, 1)
            return
        if field.type == FD.TYPE_MESSAGE:
            getattr(parent, field.name).CopyFrom(self.message(field.message_type, 1))
            return
        current = getattr(parent, field.name)
        if field.type == FD.TYPE_STRING and current and r < 0.6:
            setattr(parent, field.name, self.mutate_string(current))
        elif field.type in INT_RANGES and r < 0.5:
            lo, hi = INT_RANGES[field.type]
            value = rng.choice((current + 1, current - 1, -current, current * 2,
                                current * 1000, current ^ (1 << rng.randrange(63)),
                                current + 2**62))
            setattr(parent, field.name, min(max(value, lo), hi))
        else:
            self.set_field(parent, field, 1)

    # -- the wire itself --------------------------------------------------------------

    def corrupt_wire(self, payload: bytes) -> bytes:
        """Bytes that are not (quite) an encoding of the message."""
        rng = self.rng
        op = rng.randrange(9)
        if op == 0:
            return rng.randbytes(rng.randint(1, 64))
        if op == 8:  # unknown groups nested deeper than any parser's limit
            depth = rng.choice((50, 101, 1000))
            return payload + b"\x0b" * depth + b"\x0c" * depth
        if op == 1 and len(payload) > 1:
            return payload[:rng.randrange(1, len(payload))]
        if op == 2 and payload:
            i = rng.randrange(len(payload))
            return payload[:i] + bytes([payload[i] ^ (1 << rng.randrange(8))]) + payload[i + 1:]
        if op == 3:  # a string field with invalid UTF-8
            return payload + _varint((rng.randint(1, 6) << 3) | 2) + b"\x02\xc3\x28"
        if op == 4:  # an over-long varint
            return payload + b"\x08" + b"\xff" * 10 + b"\x01"
        if op == 5:  # a length prefix far beyond the message
            return payload + b"\x0a" + _varint(2**31)
        if op == 6:  # wrong wire type for field 1..3
            return payload + _varint((rng.randint(1, 3) << 3) | rng.choice((1, 3, 4, 5, 6, 7)))
        return payload + unknown_field(rng.randint(100, 2**29 - 1), rng.randint(0, 100))

    def oversize(self, payload: bytes, limit: int) -> bytes:
        """A valid encoding above `limit` bytes (an unknown field pads it)."""
        return payload + unknown_field(rng_field(self.rng), limit + self.rng.randint(1, 4096))

    def big_string_request(self, msg: Message, limit: int) -> Message | None:
        """`msg` with one of its string or bytes fields grown past `limit` bytes."""
        out = type(msg)()
        out.CopyFrom(msg)
        slots = [(p, f) for p, f in _slots(out, 0) if not _repeated(f)
                 and f.type in (FD.TYPE_STRING, FD.TYPE_BYTES)]
        if not slots:
            return None
        parent, field = self.rng.choice(slots)
        size = limit + self.rng.randint(1, 2048)
        setattr(parent, field.name, "A" * size if field.type == FD.TYPE_STRING else b"A" * size)
        return out

    # -- realistic requests -----------------------------------------------------------

    def template(self, rpc: Rpc, **context: Any) -> Message:
        """A valid request for `rpc`, built from the corpus (random if none is known)."""
        make = TEMPLATES.get(rpc.full_name)
        if make is None:
            return self.message(rpc.input)
        msg = message_class(rpc.input)()
        build(msg, make(self, **context))
        return msg


def rng_field(rng: random.Random) -> int:
    return rng.randint(1000, 2**29 - 1)


def _slots(msg: Message, depth: int) -> Iterator[tuple[Message, FieldDescriptor]]:
    """Every (message, field) pair of a message tree: where a mutation can go."""
    for field in msg.DESCRIPTOR.fields:
        yield msg, field
        if field.type != FD.TYPE_MESSAGE or depth >= MAX_DEPTH:
            continue
        if _is_map(field):
            continue
        if _repeated(field):
            for item in getattr(msg, field.name):
                yield from _slots(item, depth + 1)
        elif msg.HasField(field.name):
            yield from _slots(getattr(msg, field.name), depth + 1)


def build(msg: Message, values: dict[str, Any]) -> Message:
    """Set fields from a plain dict (nested dicts for messages, lists for repeated)."""
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.type == FD.TYPE_MESSAGE and not _repeated(field):
            build(getattr(msg, name), value)
            getattr(msg, name).SetInParent()
        elif _repeated(field):
            container = getattr(msg, name)
            for item in value:
                if field.type == FD.TYPE_MESSAGE:
                    build(container.add(), item)
                else:
                    container.append(item)
        else:
            setattr(msg, name, value)
    return msg


# -- templates: realistic valid requests, by method -----------------------------------


def _rid(g: Generator) -> str:
    rid = uuid.uuid4().hex
    g.corpus.request_ids.append(rid)
    return rid


def _name(g: Generator) -> str:
    return f"fuzz {g.rng.randrange(10**6)}"


def _prices(g: Generator) -> dict:
    return {"gpu_second_price": g.rng.choice((0, 500, 1000)), "call_price": g.rng.choice((0, 50)),
            "input_tokens_1k_price": g.rng.choice((0, 200)),
            "output_tokens_1k_price": g.rng.choice((0, 600))}


def _api_key(g: Generator, **_: Any) -> dict:
    role = g.rng.randint(1, 5)
    out = {"request_id": _rid(g), "role": role, "description": _name(g)}
    if role in (2, 3) or (role == 5 and g.rng.random() < 0.5):
        out["owner_id"] = g.corpus.pick("owner_id")
    if role == 3:
        out["owner_id"] = g.corpus.fixed["owner_id"][0]
        out["wallet_id"] = g.corpus.fixed["wallet_id"][0]
    if role == 4:
        out["provider_id"] = g.corpus.pick("provider_id")
    return out


def _scope(g: Generator) -> dict:
    rng = g.rng
    scope = {}
    if rng.random() < 0.5:
        scope["worker_id"] = g.corpus.pick("worker_id")
    if rng.random() < 0.3:
        scope["model"] = "tiny-lm"
    if rng.random() < 0.2:
        scope["resource_class"] = g.corpus.pick("resource_class")
    if rng.random() < 0.2:
        scope["max_prices"] = {"gpu_second_price": rng.choice((1000, 10**6))}
    return scope


def _usage(g: Generator) -> dict:
    return {"gpu_ms": g.rng.randint(0, 3000), "calls": g.rng.randint(0, 2),
            "input_tokens": g.rng.randint(0, 100), "output_tokens": g.rng.randint(0, 100)}


def _job(g: Generator) -> dict:
    rng = g.rng
    kind = rng.choice(("generate", "generate", "burn", "handler"))
    if kind == "generate":
        return {"generate": {"model": "tiny-lm", "prompt": rng.choice(("Hello", "é 🚀", "")),
                             "max_new_tokens": rng.randint(1, 6), "seed": rng.randint(0, 9),
                             "temperature_milli": rng.choice((0, 700))}}
    if kind == "burn":
        return {"burn": {"duration_ms": rng.randint(1, 30)}}
    return {"handler": {"handler": "worker.runtime.example_handlers:echo",
                        "input": b"hello fuzzy broker"}}


def _meter(g: Generator, *, kind: str = "open", voucher: str = "", seq: int = 1,
           usage: dict | None = None, session_id: str = "", worker_id: str = "",
           **_: Any) -> dict:
    if kind == "open":
        return {"open": {"request_id": _rid(g), "voucher": voucher or g.voucher(),
                         "worker_id": worker_id or g.corpus.pick("worker_id")}}
    if kind == "resume":
        return {"resume": {"session_id": session_id or g.corpus.pick("session_id"),
                           "worker_id": worker_id}}
    if kind == "usage":
        return {"usage": {"seq": seq, "usage": usage if usage is not None else _usage(g)}}
    return {"finish": {"usage": usage if usage is not None else _usage(g)}}


def _page(g: Generator) -> dict:
    return {"page_size": g.rng.randint(0, 4), "page_token": g.rng.choice(("", g.page_token()))}


def _quote(g: Generator, **_: Any) -> dict:
    rng = g.rng
    kind = rng.choice(("generate", "generate", "burn", "handler", "train"))
    job = {"kind": kind, "input_tokens": rng.randint(0, 100), "output_tokens": rng.randint(0, 64),
           "latency_target_ms": rng.choice((0, 1, 60_000)),
           "max_cost": rng.choice((0, 1, 100_000))}
    if kind in ("generate", "train"):
        job["models"] = rng.choice((["tiny-lm"], ["tiny-lm", "other-lm"], []))
    if kind == "burn" or rng.random() < 0.3:
        job["gpu_ms"] = rng.randint(1, 5_000)
    return {"request_id": _rid(g), "job": job, "lock_seconds": rng.choice((0, 60, 3600))}


def _create_plan(g: Generator, **_: Any) -> dict:
    return {"request_id": _rid(g), "display_name": _name(g),
            "credits_per_period": g.rng.randint(1, 100_000),
            "period_seconds": g.rng.choice((900, 3600, 86_400)),
            "rollover_periods": g.rng.randint(0, 2), "priority": g.rng.randint(0, 10)}


TEMPLATES = {
    "broker.v1.AdminService.CreateOwner": lambda g, **_: {
        "request_id": _rid(g), "display_name": _name(g)},
    "broker.v1.AdminService.CreditTreasury": lambda g, **_: {
        "request_id": _rid(g), "owner_id": g.corpus.pick("owner_id"),
        "amount": g.rng.choice((g.rng.randint(1, 10**6), 10**7, 2**62))},
    "broker.v1.AdminService.CreateProvider": lambda g, **_: {
        "request_id": _rid(g), "display_name": _name(g)},
    "broker.v1.AdminService.CreateApiKey": _api_key,
    "broker.v1.AdminService.RevokeApiKey": lambda g, **_: {
        "request_id": _rid(g), "key_id": g.corpus.pick("key_id")},
    "broker.v1.AuthorizationService.Authorize": lambda g, **_: {
        "request_id": _rid(g), "amount": g.rng.randint(100, 20_000),
        "ttl_seconds": g.rng.choice((0, 900, 3600)), "scope": _scope(g),
        "cache_results": g.rng.random() < 0.3},
    "broker.v1.AuthorizationService.GetAuthorization": lambda g, **_: {
        "authorization_id": g.corpus.pick("authorization_id")},
    "broker.v1.AuthorizationService.ListAuthorizations": lambda g, **_: {
        "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))),
        "page_size": g.rng.randint(0, 4), "page_token": g.rng.choice(("", g.page_token()))},
    "broker.v1.AuthorizationService.CancelAuthorization": lambda g, **_: {
        "request_id": _rid(g), "authorization_id": g.corpus.pick("authorization_id")},
    "broker.v1.AuthorizationService.GetReceipt": lambda g, **_: {
        "authorization_id": g.corpus.pick("authorization_id")},
    "broker.v1.MeteringService.Meter": _meter,
    "broker.v1.WalletService.CreateWallet": lambda g, **_: {
        "request_id": _rid(g), "display_name": _name(g), "cap": 1_000_000,
        "refill_target": g.rng.choice((0, 500_000))},
    "broker.v1.WalletService.GetWallet": lambda g, **_: {"wallet_id": g.corpus.pick("wallet_id")},
    "broker.v1.WalletService.ListWallets": lambda g, **_: {
        "page_size": g.rng.randint(0, 3), "page_token": g.rng.choice(("", g.page_token()))},
    "broker.v1.WalletService.FundWallet": lambda g, **_: {
        "request_id": _rid(g), "wallet_id": g.corpus.pick("wallet_id"),
        "amount": g.rng.randint(1, 100_000)},
    "broker.v1.WalletService.GetBalance": lambda g, **_: {
        "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id")))},
    "broker.v1.WalletService.ListTransfers": lambda g, **_: {
        "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))),
        "page_size": g.rng.randint(0, 4), "page_token": g.rng.choice(("", g.page_token()))},
    "broker.v1.WalletService.FreezeWallet": lambda g, **_: {
        "request_id": _rid(g), "wallet_id": g.corpus.pick("wallet_id")},
    "broker.v1.WalletService.UnfreezeWallet": lambda g, **_: {
        "request_id": _rid(g), "wallet_id": g.corpus.pick("wallet_id")},
    "broker.v1.WorkerRegistryService.RegisterWorker": lambda g, **_: {
        "request_id": _rid(g), "endpoint": "127.0.0.1:7001",
        "worker_id": g.rng.choice(("", g.corpus.pick("worker_id"))),
        "capabilities": {"resource_class": g.corpus.pick("resource_class") or "cpu",
                         "models": ["tiny-lm"], "meter": "cpu_time"},
        "prices": _prices(g)},
    "broker.v1.WorkerRegistryService.Heartbeat": lambda g, **_: {
        "worker_id": g.corpus.pick("worker_id")},
    "broker.v1.WorkerRegistryService.DeregisterWorker": lambda g, **_: {
        "request_id": _rid(g), "worker_id": g.corpus.pick("worker_id")},
    "broker.v1.WorkerRegistryService.ListOffers": lambda g, **_: {
        "resource_class": g.rng.choice(("", g.corpus.pick("resource_class"))),
        "model": g.rng.choice(("", "tiny-lm"))},
    "broker.v1.PricingService.Quote": _quote,
    "broker.v1.PricingService.GetQuote": lambda g, **_: {"quote_id": g.corpus.pick("quote_id")},
    "broker.v1.PricingService.CreatePlan": _create_plan,
    "broker.v1.PricingService.ListPlans": lambda g, **_: _page(g),
    "broker.v1.PricingService.Subscribe": lambda g, **_: {
        "request_id": _rid(g), "plan_id": g.corpus.pick("plan_id"),
        "wallet_id": g.corpus.pick("wallet_id")},
    "broker.v1.PricingService.CancelSubscription": lambda g, **_: {
        "request_id": _rid(g), "subscription_id": g.corpus.pick("subscription_id")},
    "broker.v1.PricingService.ListSubscriptions": lambda g, **_: _page(g),
    "broker.v1.PricingService.ListGrants": lambda g, **_: {
        "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))), **_page(g)},
    "broker.v1.PricingService.CreateLease": lambda g, **_: {
        "request_id": _rid(g), "worker_id": g.corpus.pick("worker_id"),
        "duration_seconds": g.rng.choice((900, 3600)),
        "quote_id": g.rng.choice(("", g.corpus.pick("quote_id")))},
    "broker.v1.PricingService.GetLease": lambda g, **_: {"lease_id": g.corpus.pick("lease_id")},
    "broker.v1.PricingService.ListLeases": lambda g, **_: {
        "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))), **_page(g)},
    "broker.v1.PricingService.EndLease": lambda g, **_: {
        "request_id": _rid(g), "lease_id": g.corpus.pick("lease_id")},
    "broker.v1.PricingService.AuthorizeLeaseJob": lambda g, **_: {
        "request_id": _rid(g), "lease_id": g.corpus.pick("lease_id"),
        "model": g.rng.choice(("", "tiny-lm"))},
    "worker.v1.WorkerService.Execute": lambda g, voucher="", **_: {
        "voucher": voucher or g.voucher(), "job": _job(g)},
    **{f"broker.v1.PolicyService.{name}": make for name, make in {
        "SetSpendPolicy": lambda g, **_: {
            "request_id": _rid(g), "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))),
            "clear": g.rng.random() < 0.2, "policy": {
                "max_per_authorization": g.rng.choice((0, 5_000, 10**6)),
                "limits": {"daily": g.rng.choice((0, 10**6)), "all_time": g.rng.choice((0, 10**7))},
                "scope_rules": {"allowed_models": g.rng.choice(([], ["tiny-lm"]))},
                "max_prices": _prices(g),
                "approvals": {"threshold": g.rng.choice((0, 5_000)),
                              "timeout_seconds": g.rng.choice((0, 60)),
                              "reserve_funds": g.rng.random() < 0.5},
                "rate_limits": {"requests_per_minute": g.rng.choice((0, 600)),
                                "spend_per_minute": g.rng.choice((0, 10**6))},
                "refills": {"daily_cap": g.rng.choice((0, 10**6)),
                            "pause_after_failures": g.rng.choice((0, 3))},
                "alerts": {"burst_factor": g.rng.choice((0, 3)), "freeze_on": g.rng.choice(
                    ([], [g.rng.randint(1, 8)]))}}},
        "GetSpendPolicy": lambda g, **_: {
            "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id")))},
        "GetSpendStatus": lambda g, **_: {
            "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id")))},
        "ResumeRefills": lambda g, **_: {"request_id": _rid(g),
                                         "wallet_id": g.corpus.pick("wallet_id")},
        "ListApprovals": lambda g, **_: {
            "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))),
            "page_size": g.rng.randint(0, 3), "page_token": g.rng.choice(("", g.page_token()))},
        "GetApproval": lambda g, **_: {"authorization_id": g.corpus.pick("authorization_id")},
        "ApproveAuthorization": lambda g, **_: {
            "request_id": _rid(g), "authorization_id": g.corpus.pick("authorization_id"),
            "reason": _name(g)},
        "DenyAuthorization": lambda g, **_: {
            "request_id": _rid(g), "authorization_id": g.corpus.pick("authorization_id"),
            "reason": _name(g)},
        "WatchAuthorization": lambda g, **_: {
            "authorization_id": g.corpus.pick("authorization_id")},
        "ListAlerts": lambda g, **_: {
            "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))),
            "page_size": g.rng.randint(0, 3), "page_token": g.rng.choice(("", g.page_token()))},
        "WatchAlerts": lambda g, **_: {
            "wallet_id": g.rng.choice(("", g.corpus.pick("wallet_id"))),
            "after_alert_id": g.rng.choice(("", "alr_0", "alr_1", g.corpus.pick("alert_id")))},
        "Audit": lambda g, **_: {},
        "ListJournalEntries": lambda g, **_: {
            "page_size": g.rng.randint(0, 5), "page_token": g.rng.choice(("", g.page_token()))},
        "DisputeReceipt": lambda g, **_: {
            "request_id": _rid(g), "receipt_id": g.corpus.pick("receipt_id"),
            "reason": _name(g)},
        "ListDisputes": lambda g, **_: {
            "page_size": g.rng.randint(0, 3), "page_token": g.rng.choice(("", g.page_token()))},
        "RefundReceipt": lambda g, **_: {
            "request_id": _rid(g), "receipt_id": g.corpus.pick("receipt_id"),
            "amount": g.rng.choice((1, g.rng.randint(1, 5_000), 10**12)), "reason": _name(g)},
    }.items()},
}
