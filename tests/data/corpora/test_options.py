"""Corpus adapter options are typed and checked when a spec is loaded, like method parameters."""

from __future__ import annotations

import pytest

from fairray.config import load_spec
from fairray.data.corpora import CORPORA
from fairray.errors import ConfigError


def _spec(tmp_path, corpus: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\nmethod: {name: erm}\n"
                    f"dataset: {{name: corpora, corpora: [{corpus}], extractor: {{name: opensmile_egemaps}}}}\n")
    return str(path)


@pytest.mark.parametrize("corpus,match", [
    ("{adapter: cremad, root: /x, options: {metadata_onyl: true}}",
     r"dataset.corpora\[0\].options.metadata_onyl: unknown key \(value True\); valid keys here: metadata_only"),
    ("{adapter: cremad, root: /x, options: {metadata_only: maybe}}",
     r"dataset.corpora\[0\].options.metadata_only: .*'maybe'"),
    ("{adapter: meld, root: /x, options: {splits: [train, val]}}",
     r"dataset.corpora\[0\].options: meld: splits must be a non-empty subset of \('train', 'dev', 'test'\)"),
    ("{adapter: mosi, root: /x, options: {format: hdf}}",
     r"dataset.corpora\[0\].options: mosi: format must be one of"),
])
def test_bad_options_are_refused_at_load_time_naming_file_and_key(tmp_path, corpus, match):
    path = _spec(tmp_path, corpus)
    with pytest.raises(ConfigError, match=match) as err:
        load_spec(path)
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


def test_good_options_build_the_adapter_with_typed_values(tmp_path):
    load_spec(_spec(tmp_path, "{adapter: meld, root: /x, options: {splits: [train, dev], gender_map: /g.csv}}"))
    adapter = CORPORA.get("meld").from_options({"splits": ["train", "dev"], "gender_map": "/g.csv"})
    assert adapter.splits == ("train", "dev") and adapter.gender_map == "/g.csv"
    assert isinstance(CORPORA.get("ravdess").from_options({}), CORPORA.get("ravdess"))
