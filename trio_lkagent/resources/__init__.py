"""Pools of expensive resources shared by a worker's jobs.

:class:`ResourcePool` lends resources made by an async factory (inference
engines, connections, prewarmed processes) to Trio tasks, fairly, discarding
broken ones and closing idle ones beyond ``min_size`` after ``max_idle_time``.
"""

from ._pool import ResourcePool as ResourcePool
from ._pool import ResourcePoolStatistics as ResourcePoolStatistics

__all__ = ["ResourcePool", "ResourcePoolStatistics"]
