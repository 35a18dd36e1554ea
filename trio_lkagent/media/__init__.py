"""Media pipelines and subscribed-video quality.

:class:`MediaPipeline` runs composable stages over bounded Trio memory channels in a
nursery owned by the caller's ``async with``; the built-in stages resample, remix,
amplify, meter, clean up (WebRTC APM), gate by voice activity and re-chunk audio,
and limit the frame rate of and resize video. :class:`QualityController` picks the
layer / dimensions of a subscribed video track. See ``docs/pipeline.md``.
"""

from ._audio import APM as APM
from ._audio import Gain as Gain
from ._audio import Level as Level
from ._audio import LevelMeter as LevelMeter
from ._audio import Rechunk as Rechunk
from ._audio import Remix as Remix
from ._audio import Resample as Resample
from ._audio import measure_level as measure_level
from ._pipeline import FrameStage as FrameStage
from ._pipeline import MediaPipeline as MediaPipeline
from ._pipeline import PipelineConfig as PipelineConfig
from ._pipeline import PipelineStatistics as PipelineStatistics
from ._pipeline import PipelineStream as PipelineStream
from ._pipeline import Stage as Stage
from ._pipeline import StageStatistics as StageStatistics
from ._pipeline import map_frames as map_frames
from ._quality import DEFAULT_LEVELS as DEFAULT_LEVELS
from ._quality import QualityChange as QualityChange
from ._quality import QualityController as QualityController
from ._quality import QualityLevel as QualityLevel
from ._quality import QualityOptions as QualityOptions
from ._quality import apply_level as apply_level
from ._quality import open_quality_controller as open_quality_controller
from ._quality import set_enabled as set_enabled
from ._vad import VADGate as VADGate
from ._video import FrameRateLimit as FrameRateLimit
from ._video import Resize as Resize
