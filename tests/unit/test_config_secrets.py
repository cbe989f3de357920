"""Secret settings come from files (``PREFIX_NAME_FILE`` / ``--name-file``) and never show in messages."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from combiner.settings import CombinerSettings
from fedn.config import add_settings_arguments, secret_fields, settings_from_args
from fedn.errors import InvalidArgument
from reducer.settings import ReducerSettings

SECRET = "mongodb://fedn:s3cr3t/pa#ss@db:27017/fedn"


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDN_TEST_")

    url: SecretStr = Field(SecretStr("sqlite:///x.db"), description="store URL", json_schema_extra={"secret": True})
    token: SecretStr | None = Field(None, description="bearer token", json_schema_extra={"secret": True})
    port: int = Field(1, ge=0, le=65535, description="a port")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, _Settings, "FEDN_TEST_")
    return parser.parse_args(list(argv))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "URL_FILE", "TOKEN", "TOKEN_FILE", "PORT"):
        monkeypatch.delenv(f"FEDN_TEST_{name}", raising=False)


def test_only_fields_marked_secret_are_secret():
    assert secret_fields(_Settings) == ["url", "token"]


def test_an_env_file_variable_gives_the_file_content_less_one_trailing_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDN_TEST_URL_FILE", str(_write(tmp_path, SECRET + "\n")))
    settings = settings_from_args(_Settings, _parse())
    assert settings.url.get_secret_value() == SECRET


def test_only_one_newline_is_stripped(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDN_TEST_TOKEN_FILE", str(_write(tmp_path, "tok\n\n")))
    assert settings_from_args(_Settings, _parse()).token.get_secret_value() == "tok\n"


def test_a_file_flag_gives_the_value(tmp_path):
    settings = settings_from_args(_Settings, _parse("--token-file", str(_write(tmp_path, "abc\r\n"))))
    assert settings.token.get_secret_value() == "abc"


def test_a_flag_overrides_an_env_file_as_flags_override_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDN_TEST_URL_FILE", str(_write(tmp_path, SECRET)))
    assert settings_from_args(_Settings, _parse("--url", "sqlite:///y.db")).url.get_secret_value() == "sqlite:///y.db"


def test_the_plain_env_variable_still_works(monkeypatch):
    monkeypatch.setenv("FEDN_TEST_URL", SECRET)
    assert settings_from_args(_Settings, _parse()).url.get_secret_value() == SECRET


def test_value_and_file_together_in_env_is_an_error_that_names_both_and_shows_neither(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDN_TEST_URL", SECRET)
    monkeypatch.setenv("FEDN_TEST_URL_FILE", str(_write(tmp_path, SECRET)))
    with pytest.raises(InvalidArgument, match=r"FEDN_TEST_URL or FEDN_TEST_URL_FILE") as caught:
        settings_from_args(_Settings, _parse())
    assert "s3cr3t" not in caught.value.message


def test_value_and_file_together_as_flags_is_an_error(tmp_path):
    with pytest.raises(InvalidArgument, match=r"--url or --url-file") as caught:
        settings_from_args(_Settings, _parse("--url", SECRET, "--url-file", str(_write(tmp_path, "x"))))
    assert "s3cr3t" not in caught.value.message


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_secret_file_is_an_error(tmp_path, content: str):
    path = _write(tmp_path, content)
    with pytest.raises(InvalidArgument, match=re.escape(f"{path} is empty")):
        settings_from_args(_Settings, _parse("--token-file", str(path)))


def test_a_missing_file_is_an_error_naming_the_variable_and_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("FEDN_TEST_TOKEN_FILE", str(missing))
    with pytest.raises(InvalidArgument, match=re.escape(f"FEDN_TEST_TOKEN_FILE {missing}")):
        settings_from_args(_Settings, _parse())


def test_the_secret_is_in_no_repr_and_no_validation_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDN_TEST_URL_FILE", str(_write(tmp_path, SECRET)))
    settings = settings_from_args(_Settings, _parse())
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())
    with pytest.raises(InvalidArgument) as caught:
        settings_from_args(_Settings, _parse("--port", "70000"))
    assert "port" in caught.value.message and "s3cr3t" not in caught.value.message


def test_help_shows_the_file_variant_and_the_default_unmasked():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, _Settings, "FEDN_TEST_")
    text = " ".join(parser.format_help().split())
    assert "--url-file PATH" in text and "FEDN_TEST_URL_FILE" in text and "--token-file PATH" in text
    assert "default sqlite:///x.db" in text and "--port-file" not in text


@pytest.mark.parametrize(("cls", "names"), [(ReducerSettings, {"state", "models"}), (CombinerSettings, {"models"})])
def test_store_urls_of_the_services_are_secret_and_typed_so(cls, names: set[str]):
    assert names <= set(secret_fields(cls))
    for name in names:
        assert cls.model_fields[name].annotation is SecretStr


def test_a_reducer_reads_its_state_url_from_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDN_REDUCER_STATE", raising=False)
    monkeypatch.setenv("FEDN_REDUCER_STATE_FILE", str(_write(tmp_path, SECRET + "\n")))
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, ReducerSettings, "FEDN_REDUCER_")
    settings = settings_from_args(ReducerSettings, parser.parse_args([]))
    assert settings.state.get_secret_value() == SECRET and "s3cr3t" not in repr(settings)
