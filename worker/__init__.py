"""The worker side: offline voucher checks and the metering link to the broker."""
