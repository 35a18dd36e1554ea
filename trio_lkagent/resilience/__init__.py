"""Keeping a worker fleet healthy: load, resources, health, recovery, circuit breaking, checkpoints.

Everything here is wired into :class:`~trio_lkagent.Worker` through
:class:`~trio_lkagent.WorkerOptions` (``load_calculator``, ``resource_limits``,
``resource_thresholds``, ``health_monitor``, ``recovery``,
``checkpoint_store``) and ``ctx.checkpoint`` / ``ctx.resumed`` in jobs; the
pieces also work on their own. See ``docs/resilience.md``.
"""

from ._breaker import BreakerState as BreakerState
from ._breaker import CircuitBreaker as CircuitBreaker
from ._breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import CheckpointStore as CheckpointStore
from ._checkpoint import MemoryCheckpointStore as MemoryCheckpointStore
from ._checkpoint import RedisCheckpointStore as RedisCheckpointStore
from ._checkpoint import SQLiteCheckpointStore as SQLiteCheckpointStore
from ._checkpoint import open_checkpoint_store as open_checkpoint_store
from ._healthmon import HealthCheck as HealthCheck
from ._healthmon import HealthMonitor as HealthMonitor
from ._healthmon import HealthStatistics as HealthStatistics
from ._limits import ResourceLimiter as ResourceLimiter
from ._limits import ResourceLimits as ResourceLimits
from ._load import CustomLoadCalculator as CustomLoadCalculator
from ._load import DefaultLoadCalculator as DefaultLoadCalculator
from ._load import LoadCalculator as LoadCalculator
from ._load import LoadScope as LoadScope
from ._monitor import ResourceEvent as ResourceEvent
from ._monitor import ResourceEventKind as ResourceEventKind
from ._monitor import ResourceHealth as ResourceHealth
from ._monitor import ResourceMonitor as ResourceMonitor
from ._monitor import ResourceStatus as ResourceStatus
from ._monitor import ResourceThresholds as ResourceThresholds
from ._monitor import open_resource_monitor as open_resource_monitor
from ._recovery import DefaultRecoveryHandler as DefaultRecoveryHandler
from ._recovery import FailedJob as FailedJob
from ._recovery import RecoveryAction as RecoveryAction
from ._recovery import RecoveryHandler as RecoveryHandler
from ._resp import RedisError as RedisError
from ._sampler import CgroupLimits as CgroupLimits
from ._sampler import ResourceSample as ResourceSample
from ._sampler import ResourceSampler as ResourceSampler
from ._sampler import read_cgroup_limits as read_cgroup_limits
