"""What the sidecar shows of itself: traces, metrics, access logs."""
