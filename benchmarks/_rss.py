"""Peak resident set size of the current process (no third-party imports, so
the peer processes can use it without loading JAX)."""


def peak_rss_mb() -> float:
    """VmHWM of this process. Not ru_maxrss: Linux keeps the parent's high-water
    mark across fork + exec, so a child of the (large) benchmark process would
    report the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
