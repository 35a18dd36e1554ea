"""Speech plugins: voice activity detection, speech-to-text and text-to-speech.

The seams are :class:`VAD`, :class:`STT` and :class:`TTS` (``typing.Protocol``, like
``trio.abc``); every stream follows one bounded-buffer policy (see
``docs/plugins.md``). Engines that need an extra import it lazily and name the extra
when it is missing.
"""

from ._base import DEFAULT_BUFFER_SIZE as DEFAULT_BUFFER_SIZE
from ._base import STT as STT
from ._base import TTS as TTS
from ._base import VAD as VAD
from ._base import PluginStream as PluginStream
from ._base import SpeechData as SpeechData
from ._base import SpeechEvent as SpeechEvent
from ._base import SpeechEventType as SpeechEventType
from ._base import StreamStatistics as StreamStatistics
from ._base import STTCapabilities as STTCapabilities
from ._base import STTStream as STTStream
from ._base import SynthesizedAudio as SynthesizedAudio
from ._base import VADEvent as VADEvent
from ._base import VADEventType as VADEventType
from ._base import VADOptions as VADOptions
from ._base import VADStream as VADStream
from ._base import to_mono as to_mono
from ._executor import ExecutorStatistics as ExecutorStatistics
from ._executor import InferenceExecutor as InferenceExecutor
from ._executor import open_inference_executor as open_inference_executor
from ._executor import process_cache as process_cache
from ._openai import OpenAISTT as OpenAISTT
from ._openai import OpenAITTS as OpenAITTS
from ._stt import PocketSphinxSTT as PocketSphinxSTT
from ._stt import StreamAdapter as StreamAdapter
from ._stt import warm_pocketsphinx as warm_pocketsphinx
from ._tts import EspeakTTS as EspeakTTS
from ._vad import EnergyVAD as EnergyVAD
from ._vad import SileroVAD as SileroVAD
from ._vad import WebRTCVAD as WebRTCVAD
