"""Generate docs/errors.md from the ErrorReason enum and the code, or check it.

    python scripts/gen_error_docs.py           # write docs/errors.md (`make api-docs`)
    python scripts/gen_error_docs.py --check   # exit 1 if docs/errors.md is not up to date

The reasons, their codes, transience and meaning come from protos/broker/v1/
error_reason.proto (the enum, its `reason_info` options and its comments). The reasons
of each RPC come from the code: its handler is walked call by call, in source order,
through the functions of the broker, the worker and common that it calls, and every
reason those raise is listed in the order it is first met, which is the order in which
the code checks them.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.errors import REASONS  # noqa: E402  (read from the enum's descriptor)

_spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts/gen_api_docs.py")
api_docs = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # type: ignore
_spec.loader.exec_module(api_docs)  # type: ignore

ERRORS_MD = ROOT / "docs" / "errors.md"
PACKAGES = ("broker", "common", "worker")
# The calls that make an error: BrokerError(code, reason, ...) and its helpers.
MAKERS = {"BrokerError", "invalid", "not_found", "denied", "precondition"}
# Method names too common to resolve by name alone (stores, dicts, lists, sets).
GENERIC = {"get", "put", "read", "submit", "scan", "delete", "append", "update", "add",
           "pop", "items", "keys", "values", "close", "open", "write", "run", "wait",
           "set", "clear", "send", "cancel", "start", "stop", "check", "done", "verify"}

# Functions handed to a class when it is made (the daemons wire them): attribute -> function.
INJECTED = {
    "worker.execution:JobRunner.verify_voucher": "worker.voucher_check:VoucherVerifier.verify"}


@dataclass
class Function:
    module: str
    qualname: str  # "func" or "Class.method"
    node: ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Module:
    name: str
    tree: ast.Module
    names: dict[str, str] = field(default_factory=dict)  # local name -> "module" or "module:attr"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class CallGraph:
    """Functions of the broker, the worker and common, with the reasons each can raise."""

    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}
        self.functions: dict[str, Function] = {}  # "module:qualname" -> Function
        self.by_method: dict[str, list[str]] = {}  # method name -> "module:Class.method"
        # "module:Class" -> {attribute: "module:Class"} from annotations (self.s: Services)
        self.attributes: dict[str, dict[str, str]] = {}
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*.py")):
                if "v1" in path.relative_to(ROOT).parts:
                    continue
                name = _module_name(path)
                self.modules[name] = Module(name, ast.parse(path.read_text()))
        for module in self.modules.values():
            self._index(module)
        self._memo: dict[str, list[str]] = {}
        self._stack: list[str] = []
        self._partial: set[str] = set()

    def _index(self, module: Module) -> None:
        package = module.name if module.name in PACKAGES else module.name.rsplit(".", 1)[0]
        # Imports inside functions (made there to break an import cycle) count too.
        local_imports = [n for n in ast.walk(module.tree) if isinstance(n, ast.ImportFrom)
                         and n not in module.tree.body]
        for node in [*module.tree.body, *local_imports]:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    module.names[alias.asname or alias.name] = (
                        full if full in self.modules else f"{base}:{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module.names[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions[f"{module.name}:{node.name}"] = Function(
                    module.name, node.name, node)
            elif isinstance(node, ast.ClassDef):
                self.attributes[f"{module.name}:{node.name}"] = self._attributes(module, node)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        key = f"{module.name}:{node.name}.{item.name}"
                        self.functions[key] = Function(module.name, f"{node.name}.{item.name}",
                                                       item)
                        self.by_method.setdefault(item.name, []).append(key)

    def _class_of(self, module: Module, annotation: ast.expr | None) -> str | None:
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            annotation = ast.parse(annotation.value, mode="eval").body
        if not isinstance(annotation, ast.Name):
            return None
        return module.names.get(annotation.id, f"{module.name}:{annotation.id}")

    def _attributes(self, module: Module, cls: ast.ClassDef) -> dict[str, str]:
        """The classes of a class's attributes: annotated fields, and `self.x = param`
        in __init__ where the parameter is annotated."""
        out = {}
        for item in cls.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                found = self._class_of(module, item.annotation)
                if found:
                    out[item.target.id] = found
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                params = {a.arg: self._class_of(module, a.annotation) for a in item.args.args}
                for stmt in ast.walk(item):
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Name) \
                            and params.get(stmt.value.id):
                        for target in stmt.targets:
                            if isinstance(target, ast.Attribute) and \
                                    getattr(target.value, "id", "") == "self":
                                out[target.attr] = params[stmt.value.id] or ""
        return out

    # -- resolving a call ------------------------------------------------------------------

    def reference(self, fn: Function, expr: ast.expr) -> str | None:
        """The function an expression names (`wallets.fund`, `helper`), if any."""
        module = self.modules[fn.module]
        if isinstance(expr, ast.Name):
            local = f"{fn.module}:{expr.id}"
            if local in self.functions:
                return local
            imported = module.names.get(expr.id, "")
            return imported if imported in self.functions else None
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and \
                f"{fn.module}:{expr.value.id}.{expr.attr}" in self.functions:
            return f"{fn.module}:{expr.value.id}.{expr.attr}"  # Class.method of this module
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and \
                expr.value.id in module.names:
            key = f"{module.names[expr.value.id]}:{expr.attr}"
            return key if key in self.functions else None
        if isinstance(expr, ast.Attribute) and getattr(expr.value, "id", "") == "self" and \
                "." in fn.qualname:
            own = f"{fn.module}:{fn.qualname.split('.')[0]}.{expr.attr}"
            # `self.method` handed over (a method of this class), or a function injected
            return own if own in self.functions else INJECTED.get(own)
        return None

    def resolve(self, fn: Function, call: ast.Call) -> str | None:
        target = call.func
        direct = self.reference(fn, target)
        if direct or not isinstance(target, ast.Attribute):
            return direct
        owner = target.value
        cls = f"{fn.module}:{fn.qualname.split('.')[0]}" if "." in fn.qualname else ""
        if isinstance(owner, ast.Name) and owner.id == "self" and cls:
            key = f"{cls}.{target.attr}"
            if key in self.functions:
                return key
        if isinstance(owner, ast.Attribute) and getattr(owner.value, "id", "") == "self" \
                and cls:  # self.s.authenticate, with self.s: Services
            held = self.attributes.get(cls, {}).get(owner.attr)
            if held and f"{held}.{target.attr}" in self.functions:
                return f"{held}.{target.attr}"
        candidates = self.by_method.get(target.attr, [])
        if len(candidates) == 1 and target.attr not in GENERIC:
            return candidates[0]
        return None

    # -- the reasons -----------------------------------------------------------------------

    @staticmethod
    def made(call: ast.Call) -> list[str]:
        """The reasons a BrokerError-making call names."""
        name = getattr(call.func, "id", getattr(call.func, "attr", ""))
        if name not in MAKERS:
            return []
        texts = [a.value for a in call.args
                 if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if name == "not_found":
            return [f"{texts[0].upper()}_NOT_FOUND"] if texts else []
        found = [t for t in texts if t in REASONS]
        if name == "invalid" and len(call.args) < 3:
            found.append("INVALID_ARGUMENT")
        return found

    def reasons(self, key: str) -> list[str]:
        """Every reason the function `key` can raise, in the order the code meets them."""
        if key in self._memo:
            return self._memo[key]
        if key in self._stack:  # a recursive call adds nothing new, but the functions
            self._partial.update(self._stack[self._stack.index(key) + 1:])  # between
            return []  # are not complete until `key` is
        self._stack.append(key)
        fn = self.functions[key]
        out: list[str] = []
        calls = sorted((n for n in ast.walk(fn.node) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            found = self.made(call)
            if not found:
                callee = self.resolve(fn, call)
                found = self.reasons(callee) if callee else []
                # A function handed over (`self._decide(..., approvals.approve)`) runs
                # inside the callee, after the callee's own first checks.
                for arg in call.args:
                    handed = self.reference(fn, arg)
                    found = found + (self.reasons(handed) if handed else [])
            out += [r for r in dict.fromkeys(found) if r not in out]
        self._stack.pop()
        if key in self._partial:
            self._partial.discard(key)
        else:
            self._memo[key] = out
        return list(out)

    def calls(self, key: str, target: str, seen: set[str] | None = None) -> bool:
        """Whether `key` reaches the function `target`."""
        seen = set() if seen is None else seen
        if key == target:
            return True
        seen.add(key)
        fn = self.functions[key]
        for call in (n for n in ast.walk(fn.node) if isinstance(n, ast.Call)):
            callee = self.resolve(fn, call)
            if callee and callee not in seen and self.calls(callee, target, seen):
                return True
        return False

    def servicers(self) -> Iterator[tuple[str, str]]:
        """(service full name, "module:Class") of each servicer class."""
        for module in self.modules.values():
            for node in module.tree.body:
                if not isinstance(node, ast.ClassDef):
                    continue
                for base in node.bases:
                    if isinstance(base, ast.Attribute) and base.attr.endswith("Servicer") \
                            and isinstance(base.value, ast.Name):
                        stubs = module.names.get(base.value.id, "")  # "broker.v1:x_pb2_grpc"
                        package = stubs.split(":")[0]
                        yield (f"{package}.{base.attr.removesuffix('Servicer')}",
                               f"{module.name}:{node.name}")


# -- what each RPC can return ------------------------------------------------------------

MUTATE = "broker.api.base:Services.mutate"
# Run on every call before its handler: a request that does not decode (both servers).
BEFORE_HANDLER = "common.undecodable:_undecodable"
# What the store itself may answer (broker/store/pg_store.py: the database lost), out of
# reach of the call graph (the store is called through its interface).
STORE_REASONS = ("STORE_UNAVAILABLE",)
# The worker's Execute passes the broker's refusal of a redemption through unchanged.
PASSED_THROUGH = {"worker.v1.WorkerService.Execute": "broker.v1.MeteringService.Meter"}


@dataclass
class Rpc:
    name: str  # broker.v1.WalletService.CreateWallet
    reasons: list[str]
    request_id: bool  # the request has a request_id
    replayed: bool  # ... and its first success is remembered (Services.mutate)
    streaming: bool


def rpcs(graph: CallGraph | None = None) -> list[Rpc]:
    graph = graph or CallGraph()
    handlers = dict(graph.servicers())
    out = []
    for file in api_docs.load().file:
        if file.package not in ("broker.v1", "worker.v1"):
            continue
        messages = {f".{file.package}.{m.name}": m for m in file.message_type}
        for service in file.service:
            full = f"{file.package}.{service.name}"
            for method in service.method:
                key = f"{handlers[full]}.{method.name}"
                fields = {f.name for f in messages[method.input_type].field} \
                    if method.input_type in messages else set()
                request_id = "request_id" in fields
                found = list(graph.reasons(BEFORE_HANDLER))
                found += [r for r in graph.reasons(key) if r not in found]
                if file.package == "broker.v1":  # every broker call reads the store
                    found += [r for r in STORE_REASONS if r not in found]
                out.append(Rpc(f"{full}.{method.name}", found, request_id,
                               request_id and graph.calls(key, MUTATE),
                               method.client_streaming or method.server_streaming))
    return sorted(out, key=lambda r: r.name)


def may_return(rpc: str, table: dict[str, Rpc]) -> set[str]:
    """The reasons a call of `rpc` may carry (its own and what it passes through)."""
    found = set(table[rpc].reasons)
    if rpc in PASSED_THROUGH:
        found |= set(table[PASSED_THROUGH[rpc]].reasons)
    return found


# -- rendering ---------------------------------------------------------------------------

HEADER = """# Errors

<!-- Generated by scripts/gen_error_docs.py from protos/broker/v1/error_reason.proto and
the code: edit the enum's comments (or the code) and run `make api-docs`. A test fails
when this file is out of date. -->

Every failed call returns a canonical gRPC status code and a `google.rpc.Status` with a
`google.rpc.ErrorInfo` detail (AIP-193) in the `grpc-status-details-bin` trailer: a
stable `reason` below, the domain `broker.v1` (`worker.v1` for what a worker answers
itself), and metadata naming the object concerned. Invalid fields also carry a
`google.rpc.BadRequest` with field violations. Errors a caller should retry after a
pause (`SHUTTING_DOWN`, rate limits) carry `google.rpc.RetryInfo` with the delay; budget
limits (`INSUFFICIENT_FUNDS`, spend limits) carry `google.rpc.QuotaFailure` naming the
account or limit and the amounts. A rejected call changes nothing. Bad input never
yields `INTERNAL` or `UNKNOWN`. Messages never contain API keys or voucher tokens.

The reasons are the values of the enum `broker.v1.ErrorReason`
(`protos/broker/v1/error_reason.proto`) without their `ERROR_REASON_` prefix; the code
can raise no other. Workers (`worker.v1.WorkerService`) use the same reasons, and pass
the broker's own status through unchanged when the broker refuses a redemption (for
example `VOUCHER_ALREADY_REDEEMED`). Messages above 64 KiB are refused by gRPC itself
with `RESOURCE_EXHAUSTED` (no ErrorInfo: the request never reaches the broker's code).

**Transient** means the same request can succeed later with nothing changed but time
(RetryInfo says how long where the broker knows it). Any other reason comes back for
the same request until the caller, the owner or the operator changes what it names.

**Retries with the same `request_id`** (AIP-155): the first success of a mutating call
is remembered for 48 hours with its changes, in the same atomic write; a retry with
the same id and the same fields returns that answer again and does nothing twice, and
the same id with other fields fails with `REQUEST_ID_REUSED`. A failure is not
remembered (it changed nothing): a retry runs the call again, so a transient reason may
have cleared, and any other returns again unless what it names has changed meanwhile.
"""

REPLAYED = ("Has a `request_id`: after a success, a retry with the same id returns the "
            "first answer and does nothing again; after a failure, it runs again.")
READ = "Changes nothing and has no `request_id`: retry freely."
# Streams have no request_id; what a retry does instead.
STREAMS = {
    "broker.v1.MeteringService.Meter":
        "A stream with no `request_id`: a worker that lost it opens a new stream with "
        "`resume` (the session stays open); a second `open` of the same voucher fails "
        "with `VOUCHER_ALREADY_REDEEMED`.",
    "broker.v1.MeteringService.MeterWorker":
        "A stream with no `request_id`: a worker that lost it opens a new one and resumes "
        "its sessions there (or on `Meter`); a refused item changed nothing and its "
        "neighbours in the batch are unaffected. An open with a `request_id` is "
        "remembered as on `Meter`.",
    "worker.v1.WorkerService.Execute":
        "A stream with no `request_id`; the voucher is single-use: a retry with the same "
        "voucher after the broker redeemed it fails with `VOUCHER_ALREADY_REDEEMED` "
        "(passed through), while a refusal that came before redemption (every reason "
        "of the worker's own) spent nothing and may be retried.",
}


def retry_line(rpc: Rpc) -> str:
    if rpc.replayed:
        return REPLAYED
    return STREAMS.get(rpc.name, READ)


def reason_comments() -> dict[str, str]:
    prefix = "broker.v1.ErrorReason.ERROR_REASON_"
    return {e.name[len(prefix):]: e.comment for e in api_docs.elements(api_docs.load())
            if e.kind == "enum value" and e.name.startswith(prefix)}


def _row(reason: str) -> str:
    info = REASONS[reason]
    return f"| `{reason}` | {' / '.join(info.codes)} | {'yes' if info.transient else 'no'} |"


def _retry(reason: str) -> str:
    """What a retry with the same request_id gets after a failure with `reason`."""
    if reason == "REQUEST_ID_REUSED":
        return "the same error for 48 h: the id is taken; use a new one"
    if reason == "REFUND_DUPLICATE":
        return "the same error; the first refund's request_id returns that refund"
    if REASONS[reason].transient:
        return "runs again; may succeed once the condition clears"
    return "runs again; the same error until what it names changes"


def render(table: list[Rpc] | None = None) -> str:
    table = rpcs() if table is None else table
    comments = reason_comments()
    out = [HEADER, "## Reasons\n", "| Reason | Code | Transient | Meaning |",
           "|--------|------|-----------|---------|"]
    out += [f"{_row(name)} {api_docs.cell(comments[name])} |" for name in REASONS]
    out += ["", "## The reasons of each RPC", "",
            "In the order the code checks them: of a request with several faults, the first "
            "listed is the one returned. The first, `INVALID_ARGUMENT`, is also what a request "
            "that does not decode gets, before anything else. Calls with no API key to check "
            "list none of the authentication reasons."]
    for rpc in table:
        out += ["", f"### `{rpc.name}`", "", retry_line(rpc)]
        if rpc.name in PASSED_THROUGH:
            out += ["", f"Also the reasons of `{PASSED_THROUGH[rpc.name]}`, passed through "
                        "when the broker refuses the redemption."]
        if rpc.reasons and rpc.replayed:
            out += ["", "| Reason | Code | Transient | A retry with the same request_id |",
                    "|--------|------|-----------|---------------------------------|"]
            out += [f"{_row(reason)} {_retry(reason)} |" for reason in rpc.reasons]
        elif rpc.reasons:
            out += ["", "| Reason | Code | Transient |", "|--------|------|-----------|"]
            out += [_row(reason) for reason in rpc.reasons]
        else:
            out += ["", "Returns no reason of its own."]
    return "\n".join(out) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not ERRORS_MD.exists() or ERRORS_MD.read_text() != text:
            print(f"{ERRORS_MD.relative_to(ROOT)} is out of date: run `make api-docs`")
            return 1
        return 0
    ERRORS_MD.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
