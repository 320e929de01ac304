"""Peak resident memory of this process. Pure Python: imported by siirl's side and by
TRL's side, each in its own environment."""
from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    """VmHWM, the high-water mark of this process's own address space. Not getrusage's
    ru_maxrss: Linux carries that across fork and exec, so a side started by a driver
    that holds 1 GB reports at least 1 GB (both sides showed the driver's figure)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is
