"""Feature extraction: registered extractors (audio or text → one float32 row per utterance) and their cache.

Importing this package registers every extractor; none imports its heavy dependency (openSMILE,
transformers, resemblyzer, SpeechBrain) before it is used.

>>> from fairray.data.features import FeatureCache, make_extractor          # doctest: +SKIP
>>> feats = FeatureCache(cache_dir).get_or_compute(table, root, make_extractor("opensmile_egemaps"))  # doctest: +SKIP
"""

from fairray.data.features import gender, opensmile, speaker, ssl, text  # noqa: F401 (register)
from fairray.data.features._base import EXTRACTORS, Extractor, make_extractor
from fairray.data.features._cache import CachedFeatures, CacheStats, FeatureCache, table_fingerprint

__all__ = ["EXTRACTORS", "CacheStats", "CachedFeatures", "Extractor", "FeatureCache", "make_extractor",
           "table_fingerprint"]
