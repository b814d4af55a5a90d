"""`broker status`: an owner's money at a glance, in tables that fit the terminal.

The treasury; per wallet what is posted, held, spent today and this month (the
counters the spend limits use); and the last receipts across the wallets. Amounts are
micro-credits, shown as credits with six decimals (integer arithmetic, no floats)."""

from __future__ import annotations

from dataclasses import dataclass

from .client import BrokerClient

MICRO = 1_000_000


@dataclass(frozen=True)
class WalletLine:
    wallet_id: str
    name: str
    posted: int
    held: int
    spent_today: int
    spent_this_month: int
    frozen: bool


@dataclass(frozen=True)
class ReceiptLine:
    receipt_id: str
    wallet_id: str
    settled: str  # UTC minute it settled, or the start of the hour or day it settled in
    held: int
    charged: int


@dataclass(frozen=True)
class Status:
    treasury_posted: int
    treasury_available: int
    wallets: list[WalletLine]
    receipts: list[ReceiptLine]


def gather(client: BrokerClient, last_receipts: int = 5) -> Status:
    """Read everything with the owner key `client` was made with."""
    treasury = client.balance("")
    wallets, receipts = [], []
    for wallet in client.list_wallets():
        spend = client.spend_status(wallet.wallet_id)
        wallets.append(WalletLine(wallet.wallet_id, wallet.display_name,
                                  wallet.balance.posted, wallet.balance.pending,
                                  spend.spent_today, spend.spent_this_month, wallet.frozen))
        latest = client.latest_receipts(wallet.wallet_id, last_receipts) if last_receipts else []
        for r in latest:
            when = r.settle_time if r.HasField("settle_time") else r.period_start
            settled = when.ToDatetime().strftime("%Y-%m-%d %H:%M")
            receipts.append(ReceiptLine(r.receipt_id, wallet.wallet_id, settled, r.held,
                                        r.charged))
    receipts.sort(key=lambda r: r.settled, reverse=True)
    return Status(treasury.posted, treasury.available, wallets, receipts[:last_receipts])


def credits(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole:,}.{frac:06d}"


def table(headers: list[str], rows: list[list[str]], width: int,
          squeeze: tuple[int, ...] = (0,)) -> str:
    """Columns padded to their widest cell, text left- and numbers right-aligned; when
    the table is wider than `width`, the `squeeze` columns (names, ids; text) are cut,
    in that order, to make it fit."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for i in squeeze:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        if over > 0:
            widths[i] = max(len(headers[i]), widths[i] - over, 4)

    def cell(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[:widths[i] - 1] + "…"
        return text.ljust(widths[i]) if i in squeeze else text.rjust(widths[i])

    lines = ["  ".join(cell(h, i) for i, h in enumerate(headers))]
    lines += ["  ".join(cell(c, i) for i, c in enumerate(row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def render(status: Status, width: int = 80) -> str:
    out = [f"Treasury: {credits(status.treasury_posted)} credits posted, "
           f"{credits(status.treasury_available)} available", ""]
    rows = [[(w.name or w.wallet_id) + (" (frozen)" if w.frozen else ""), credits(w.posted),
             credits(w.held), credits(w.spent_today), credits(w.spent_this_month)]
            for w in status.wallets]
    out.append(table(["Wallet", "Posted", "Held", "Spent today", "This month"], rows, width)
               if rows else "No wallets yet.")
    out.append("")
    if status.receipts:
        names = {w.wallet_id: w.name or w.wallet_id for w in status.wallets}
        rows = [[names.get(r.wallet_id, r.wallet_id), r.settled, credits(r.held),
                 credits(r.charged), r.receipt_id] for r in status.receipts]
        out.append("Last receipts:")
        out.append(table(["Wallet", "Settled (UTC)", "Held", "Charged", "Receipt"], rows,
                         width, squeeze=(0, 4)))
    else:
        out.append("No receipts yet.")
    return "\n".join(out) + "\n"
