import pytest

from portal.errors import ValidationError
from portal.passwords import Passwords
from portal.validation import clean_branding, normalize_domain, normalize_email, normalize_slug


@pytest.fixture(scope="module")
def passwords():
    return Passwords(time_cost=1, memory_kib=8192, parallelism=1)


def test_hashes_are_argon2id_and_verify(passwords):
    stored = passwords.hash("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert passwords.verify(stored, "correct horse battery")
    assert not passwords.verify(stored, "correct horse batterz")


def test_missing_or_garbage_hashes_never_verify(passwords):
    assert not passwords.verify(None, "decoy password never accepted")
    assert not passwords.verify("not-a-hash", "anything at all")
    assert not passwords.verify(passwords.hash("x" * 12), "x" * 5000)


def test_parameter_change_asks_for_rehash(passwords):
    stronger = Passwords(time_cost=2, memory_kib=8192, parallelism=1)
    assert stronger.needs_rehash(passwords.hash("correct horse battery"))
    assert not passwords.needs_rehash(passwords.hash("correct horse battery"))


def test_short_passwords_are_refused(passwords):
    with pytest.raises(ValidationError, match="at least 12 characters"):
        passwords.hash("short")


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Alice@ACME.test ", "alice@acme.test"),
    ("\uff42\uff4f\uff42@acme.test", "bob@acme.test"),  # full-width letters fold (NFKC)
    ("José@Bücher.example", "josé@bücher.example"),
    ("josé@XN--BCHER-KVA.example", "josé@bücher.example"),  # IDNA spelling, same mailbox
    ("\uff4a\uff4f\uff53\uff45@\uff22\uff55\u0308cher.example", "jose@bücher.example"),
])
def test_emails_are_normalized(raw, expected):
    assert normalize_email(raw) == expected
    # Addresses from identity providers get the same spelling, so they find the same account.
    from federation.identity import canonical_email
    assert canonical_email(raw) == expected


@pytest.mark.parametrize("raw", ["", "no-at-sign", "@acme.test", "a@b", "a b@acme.test",
                                 "a@-bad-.test", "a@" + "x" * 300 + ".test",
                                 "a@xn--zz.test"])
def test_invalid_emails_are_refused(raw):
    with pytest.raises(ValidationError, match="valid email"):
        normalize_email(raw)


def test_domains_and_slugs():
    assert normalize_domain("Bücher.Example.") == "xn--bcher-kva.example"
    with pytest.raises(ValidationError):
        normalize_domain("localhost")
    assert normalize_slug(" Acme-EU ") == "acme-eu"
    for bad in ["-acme", "acme-", "ac me", "ac_me", "a" * 64, ""]:
        with pytest.raises(ValidationError):
            normalize_slug(bad)


@pytest.mark.parametrize("branding", [
    {"primary_color": "red;}</style><script>alert(1)</script>"},
    {"primary_color": "#12345g"},
    {"primary_color": "#123456; background:url(x)"},
    {"logo_url": "javascript:alert(1)"},
    {"logo_url": "https://cdn.example/logo.png\" onerror=\"alert(1)"},
    {"logo_url": "http://cdn.example/logo.png"},
    {"footer_text": "x" * 301},
])
def test_branding_that_could_break_out_is_refused(branding):
    with pytest.raises(ValidationError) as caught:
        clean_branding(branding)
    assert caught.value.code == "invalid_branding"


def test_branding_keeps_safe_values():
    assert clean_branding({"primary_color": "#0B6E4F", "logo_url": "https://cdn.example/a.png",
                           "footer_text": "<b>Acme</b>", "other": "dropped"}) == {
        "primary_color": "#0b6e4f", "logo_url": "https://cdn.example/a.png",
        "footer_text": "<b>Acme</b>"}  # footer is escaped when rendered, never stored as HTML
