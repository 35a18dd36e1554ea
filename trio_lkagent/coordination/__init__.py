"""Participant coordination and event processing, on any :class:`~trio_lkagent.Room`.

- :class:`ParticipantCoordinator` (:func:`open_coordinator`): who is in the room
  and what they do (activity and last-activity times), groups, the interaction
  graph, activity metrics, rules with async actions, handlers per activity type.
- :class:`EventProcessor` (:func:`open_event_processor`): filters, handlers per
  event type, batch processors (flush on N events or T seconds), a bounded
  history queryable by type and time, counters.

Both run in a task the ``async with`` block owns; see ``docs/coordination.md``.
"""

from ._coordinator import Activity as Activity
from ._coordinator import ActivityHandler as ActivityHandler
from ._coordinator import ActivityMetrics as ActivityMetrics
from ._coordinator import ActivityType as ActivityType
from ._coordinator import CoordinatedParticipant as CoordinatedParticipant
from ._coordinator import CoordinationRule as CoordinationRule
from ._coordinator import Interaction as Interaction
from ._coordinator import ParticipantCoordinator as ParticipantCoordinator
from ._coordinator import ParticipantGroup as ParticipantGroup
from ._coordinator import open_coordinator as open_coordinator
from ._processor import BatchProcessor as BatchProcessor
from ._processor import EventFilter as EventFilter
from ._processor import EventProcessor as EventProcessor
from ._processor import EventProcessorStatistics as EventProcessorStatistics
from ._processor import RecordedEvent as RecordedEvent
from ._processor import open_event_processor as open_event_processor

__all__ = [
    "Activity",
    "ActivityHandler",
    "ActivityMetrics",
    "ActivityType",
    "BatchProcessor",
    "CoordinatedParticipant",
    "CoordinationRule",
    "EventFilter",
    "EventProcessor",
    "EventProcessorStatistics",
    "Interaction",
    "ParticipantCoordinator",
    "ParticipantGroup",
    "RecordedEvent",
    "open_coordinator",
    "open_event_processor",
]
