"""A store URI is printed, logged and stored without its credentials."""

import pytest

from fairray.tracking import find_sweep_run, shown_uri


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://mlflow:s3cr3t@db.internal:5432/mlflow", "postgresql://***@db.internal:5432/mlflow"),
    ("postgresql+psycopg2://u:p%40ss@127.0.0.1/m?sslmode=require", "postgresql+psycopg2://***@127.0.0.1/m?sslmode=require"),
    ("https://user:token@mlflow.example.com", "https://***@mlflow.example.com"),
    ("mysql://root@localhost/db", "mysql://***@localhost/db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),  # an @ in a path is no credential
    ("databricks", "databricks"),
    (None, "None"),
])
def test_credentials_are_masked_and_nothing_else_changes(uri, shown):
    assert shown_uri(uri) == shown


def test_an_unknown_experiment_names_the_store_without_its_password(tmp_path):
    from fairray.errors import TrackingError

    # a SQLite store reached through a URI carrying (meaningless) credentials-like text is not possible, so check the
    # message path through a real store and the masking of the URI it prints
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingError) as err:
        find_sweep_run(uri, "nope")
    assert "no MLflow experiment 'nope' at sqlite:///" in str(err.value)
