"""Store URLs given as secrets open like strings; a malformed one is refused without printing its secret."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from fedn.errors import InvalidArgument
from fedn.store import LocalModelStore, SQLiteStateStore, open_model_store, open_state_store


@pytest.mark.parametrize("password", ["pa55word", "pa55:word"])
def test_an_s3_url_with_an_unescaped_slash_is_invalid_and_does_not_echo_the_password(password: str):
    with pytest.raises(InvalidArgument) as caught:
        open_model_store(f"s3://AKIA:{password}/models@minio")
    assert "pa55" not in caught.value.message
    assert "percent-encode" in caught.value.message


def test_secret_store_urls_open_like_strings(tmp_path):
    state = open_state_store(SecretStr(f"sqlite:///{tmp_path}/state.db"))
    models = open_model_store(SecretStr((tmp_path / "models").as_uri()))
    try:
        assert isinstance(state, SQLiteStateStore) and isinstance(models, LocalModelStore)
    finally:
        state.close()


@pytest.mark.parametrize("url", ["fedn:hunter2@mongo://db/fedn", "hunter2", "ftp://fedn:hunter2@host/x"])
def test_an_unknown_scheme_is_refused_without_echoing_a_credential(url: str):
    for opener in (open_state_store, open_model_store):
        with pytest.raises(InvalidArgument, match="unsupported") as caught:
            opener(url)
        assert "hunter2" not in caught.value.message
