"""Store URLs are printed with no secret in them, whatever the secret holds, and redaction never raises."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from fedn.store.redact import redact_url

# characters a password may hold that urllib takes for URL structure when left unencoded
SECRET_CHARS = "abcXYZ019/#?@+%:"
secrets = st.text(alphabet=SECRET_CHARS, min_size=6, max_size=24).filter(lambda s: sum(c.isalnum() for c in s) >= 3)

TEMPLATES = [
    "mongodb://fedn:{s}@mongo:27017/fedn?authSource=admin",
    "mongodb://fedn:{s}@h1:27017,h2:27017,h3:27017/fedn?replicaSet=rs0&authSource=admin",
    "mongodb+srv://fedn:{s}@cluster0.example.net/fedn?retryWrites=true",
    "s3://AKIAFEDN:{s}@minio:9000/fedn-models?secure=true",
    "minio://AKIAFEDN:{s}@10.0.0.5:9000/models",
    "s3://minio:9000/models?access_key=AKIAFEDN&secret_key={s}",
    "s3://minio:9000/models?secret_key={s}&secure=true",
    "minio://minio:9000/models?secure=false&access_key=AKIAFEDN&secret_key={s}",
    "cannot use MongoDB at mongodb://u:{s}@h1,h2/db?replicaSet=rs0: timed out",
]


@pytest.mark.parametrize("template", TEMPLATES)
@given(secret=secrets)
@settings(max_examples=150, deadline=None)
def test_no_secret_is_ever_printed_and_nothing_raises(template: str, secret: str):
    skeleton = template.replace("{s}", "")
    if secret in skeleton:  # the test would find the template's own text, not a leak
        return
    for form in (secret, quote(secret, safe="")):
        shown = redact_url(template.replace("{s}", form))
        assert form not in shown, shown
        assert "***" in shown


@given(text=st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_text_at_all_is_returned_without_raising(text: str):
    assert isinstance(redact_url(text), str)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://fedn:pa/ss@mongo/fedn", "mongodb://fedn:***@mongo/fedn"),
        ("mongodb://fedn:pa#ss@mongo/fedn", "mongodb://fedn:***@mongo/fedn"),
        ("mongodb://fedn:pa?ss@mongo/fedn", "mongodb://fedn:***@mongo/fedn"),
        (
            "mongodb://u:p@h1:27017,h2:27017/db?replicaSet=rs0",
            "mongodb://u:***@h1:27017,h2:27017/db?replicaSet=rs0",
        ),
        ("s3://AKIA:SECRET@minio:9000/models", "s3://AKIA:***@minio:9000/models"),
        (
            "s3://minio:9000/b?access_key=AK&secret_key=SK&secure=true",
            "s3://minio:9000/b?access_key=***&secret_key=***&secure=true",
        ),
        ("https://ghp_token123@github.com/x", "https://***@github.com/x"),
    ],
)
def test_hosts_users_and_options_stay_readable(url: str, shown: str):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["sqlite:///.fedn/state.db", "file://.fedn/models", "mongodb://h1:27017,h2:27017/fedn?replicaSet=rs0", ""],
)
def test_urls_without_secrets_are_unchanged(url: str):
    assert redact_url(url) == url


def test_a_secret_setting_is_unwrapped_and_redacted():
    assert redact_url(SecretStr("mongodb://u:hunter2@h/db")) == "mongodb://u:***@h/db"


def test_an_object_whose_str_fails_prints_as_a_mask():
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert redact_url(Broken()) == "***"
