"""Corpus adapters: each corpus in its native layout → one validated table of utterances.

Importing this package registers every adapter; `fairray data list` shows them with their layouts.
"""

from fairray.data.corpora import cremad, emodb, iemocap, manifest, meld, mosi, nemo, ravdess  # noqa: F401 (register)
from fairray.data.corpora._base import CORPORA, EMOTIONS, GENDERS, REQUIRED_COLUMNS, CorpusAdapter, validate_table
from fairray.data.corpora.stats import corpus_stats, format_stats


def vote_corpora() -> list[str]:
    """Registered adapters whose tables carry rater-vote soft labels (``targets: multi``)."""
    return [name for name in CORPORA if CORPORA.get(name).has_votes]


__all__ = ["CORPORA", "EMOTIONS", "GENDERS", "REQUIRED_COLUMNS", "CorpusAdapter", "corpus_stats", "format_stats",
           "validate_table", "vote_corpora"]
