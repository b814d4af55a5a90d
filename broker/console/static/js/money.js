// Amounts arrive as decimal strings of micro-credits (int64) and are shown as credits
// with all six decimals, computed with BigInt: never a floating-point step.

const MICRO = 1000000n;

export function credits(micro) {
  const value = BigInt(micro ?? 0);
  const sign = value < 0n ? "-" : "";
  const abs = value < 0n ? -value : value;
  const whole = (abs / MICRO).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${sign}${whole}.${(abs % MICRO).toString().padStart(6, "0")}`;
}

// "no limit" for a limit of 0, as the policy defines it.
export function limit(micro) {
  return BigInt(micro ?? 0) === 0n ? "no limit" : credits(micro);
}

// For drawing only (bar heights): a Number is fine there, never for figures shown.
export function approx(micro) {
  return Number(BigInt(micro ?? 0)) / 1e6;
}
