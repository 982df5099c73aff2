"""The CPU's feature flags as the kernels' __builtin_cpu_supports sees them
(Linux /proc/cpuinfo), for tests of kernels that run only with some of them."""


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        return set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
