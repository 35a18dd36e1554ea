"""Measuring this worker's process tree and its machine (or container), with psutil.

One :class:`ResourceSampler` per worker takes a :class:`ResourceSample` at each
tick: CPU and memory of the process and its children, of the machine, and the
limits that apply. Limits are the container's when there is one: cgroup v2
(``/sys/fs/cgroup/memory.max``, ``cpu.max``) or v1 (``memory.limit_in_bytes``,
``cpu.cfs_quota_us``/``cpu.cfs_period_us``), otherwise the host's.

psutil reads ``/proc``. Finding the children is the costly part with psutil
(it scans every process, ~3 ms on a busy host), so on Linux the tree is walked
through ``/proc/<pid>/task/<tid>/children`` instead (~0.05 ms); a whole sample
then costs about half a millisecond and the worker takes it on the event loop,
with no thread (``bench/bench_resilience.py`` measures it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import attrs
import psutil

__all__ = ["CgroupLimits", "ResourceSample", "ResourceSampler", "read_cgroup_limits"]

#: cgroup v1 reports "no limit" as a huge page-aligned number; anything above this is none.
_UNLIMITED = 1 << 60


def _proc_children(pid: int) -> list[int]:
    """Direct children of *pid*, from ``/proc/<pid>/task/*/children`` (Linux)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return found


_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


@attrs.frozen
class CgroupLimits:
    """The limits of the container this process runs in (None: no limit set)."""

    memory_bytes: int | None = None
    #: CPU quota in cores (``cpu.max`` quota / period), e.g. 1.5.
    cpu_cores: float | None = None
    #: Memory the cgroup uses now, in bytes (None when unknown).
    memory_used_bytes: int | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_cgroup_limits(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> CgroupLimits:
    """The memory and CPU limits of the cgroup under *root* (v2 first, then v1).

    Args:
        root: Where the cgroup filesystem is mounted (a directory in tests).
    """
    base = Path(root)
    memory: int | None = None
    cores: float | None = None
    used: int | None = None
    v2_mem = _read(base / "memory.max")
    v2_cpu = _read(base / "cpu.max")
    if v2_mem is not None or v2_cpu is not None:
        if v2_mem and v2_mem != "max":
            memory = int(v2_mem)
        if v2_cpu:
            quota, _, period = v2_cpu.partition(" ")
            if quota != "max" and period:
                cores = int(quota) / int(period)
        current = _read(base / "memory.current")
        used = int(current) if current else None
    else:
        v1_mem = _read(base / "memory" / "memory.limit_in_bytes")
        if v1_mem and int(v1_mem) < _UNLIMITED:
            memory = int(v1_mem)
        quota_text = _read(base / "cpu" / "cpu.cfs_quota_us")
        period_text = _read(base / "cpu" / "cpu.cfs_period_us")
        if quota_text and period_text and int(quota_text) > 0:
            cores = int(quota_text) / int(period_text)
        current = _read(base / "memory" / "memory.usage_in_bytes")
        used = int(current) if current and memory is not None else None
    return CgroupLimits(memory_bytes=memory, cpu_cores=cores, memory_used_bytes=used)


@attrs.frozen
class ResourceSample:
    """One measurement of the worker's process tree and its machine.

    Percentages are of what is available to this process: a container's CPU
    quota and memory limit when set, else the host's cores and RAM.
    """

    #: ``time.time()`` of the sample.
    timestamp: float
    #: CPU of the process tree, percent of ONE core (200.0 = two cores busy).
    process_cpu_percent: float
    #: Resident memory of the process tree, in MB (2**20 bytes).
    process_memory_mb: float
    #: CPU of the machine (or container quota), percent of all available cores.
    machine_cpu_percent: float
    #: Memory used on the machine (or in the container), percent of the limit.
    machine_memory_percent: float
    #: Cores available: the cgroup quota, else ``os.cpu_count()``.
    cpu_cores: float
    #: Memory available, in MB: the cgroup limit, else total RAM.
    memory_limit_mb: float
    #: Threads of this process.
    threads: int
    #: Open file descriptors of this process (-1 where unsupported).
    open_fds: int
    #: Processes in the tree (this one and its descendants).
    processes: int

    @property
    def process_cpu_fraction(self) -> float:
        """Process-tree CPU as a fraction of the available cores, in [0, 1]."""
        return min(1.0, self.process_cpu_percent / 100.0 / max(self.cpu_cores, 1e-9))

    @property
    def process_memory_fraction(self) -> float:
        """Process-tree memory as a fraction of the memory limit, in [0, 1]."""
        return min(1.0, self.process_memory_mb / max(self.memory_limit_mb, 1e-9))


class ResourceSampler:
    """Takes :class:`ResourceSample` s of this process's tree (blocking: call in a thread).

    CPU percentages are measured between consecutive :meth:`sample` calls (the
    first call primes the counters and reports 0).

    Args:
        pid: The root of the process tree (default: this process).
        cgroup_root: Where to read container limits from.
    """

    def __init__(self, pid: int | None = None, *, cgroup_root: str = "/sys/fs/cgroup") -> None:
        self._proc = psutil.Process(pid)
        self._cgroup_root = cgroup_root
        self._children: dict[int, psutil.Process] = {}
        self._limits = read_cgroup_limits(cgroup_root)
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)

    @property
    def limits(self) -> CgroupLimits:
        """The container limits read when the sampler was made."""
        return self._limits

    def _child_pids(self) -> list[int]:
        if _PROC_CHILDREN:
            found: list[int] = []
            stack = [self._proc.pid]
            while stack:
                kids = _proc_children(stack.pop())
                found += kids
                stack += kids
            return found
        try:
            return [child.pid for child in self._proc.children(recursive=True)]
        except psutil.Error:
            return []

    def _tree(self) -> list[psutil.Process]:
        alive: dict[int, psutil.Process] = {}
        for pid in self._child_pids():
            known = self._children.get(pid)
            if known is None:
                try:
                    known = psutil.Process(pid)
                    known.cpu_percent(None)  # prime: its first reading counts from now
                except psutil.Error:
                    continue
            alive[pid] = known
        self._children = alive
        return list(alive.values())

    def sample(self) -> ResourceSample:
        """Measure now (blocking, reads ``/proc``)."""
        proc = self._proc
        with proc.oneshot():
            cpu = proc.cpu_percent(None)
            rss = proc.memory_info().rss
            threads = proc.num_threads()
            try:
                fds = proc.num_fds()
            except (AttributeError, psutil.Error):
                fds = -1
        children = self._tree()
        for child in children:
            try:
                with child.oneshot():
                    cpu += child.cpu_percent(None)
                    rss += child.memory_info().rss
            except psutil.Error:
                continue
        limits = self._limits
        host_cores = float(os.cpu_count() or 1)
        cores = min(limits.cpu_cores, host_cores) if limits.cpu_cores else host_cores
        vm = psutil.virtual_memory()
        if limits.memory_bytes is not None and limits.memory_bytes < vm.total:
            mem_limit = float(limits.memory_bytes)
            current = read_cgroup_limits(self._cgroup_root).memory_used_bytes
            mem_used = float(current) if current is not None else float(rss)
            machine_mem = 100.0 * mem_used / mem_limit
        else:
            mem_limit = float(vm.total)
            machine_mem = float(vm.percent)
        machine_cpu = psutil.cpu_percent(None)
        if limits.cpu_cores and limits.cpu_cores < host_cores:
            # Busy time of the whole host, scaled to the quota: an upper bound
            # that errs towards "loaded" rather than over-admitting.
            machine_cpu = min(100.0, machine_cpu * host_cores / limits.cpu_cores)
        return ResourceSample(
            timestamp=time.time(),
            process_cpu_percent=cpu,
            process_memory_mb=rss / 2**20,
            machine_cpu_percent=machine_cpu,
            machine_memory_percent=machine_mem,
            cpu_cores=cores,
            memory_limit_mb=mem_limit / 2**20,
            threads=threads,
            open_fds=fds,
            processes=1 + len(children),
        )
