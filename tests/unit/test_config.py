from pathlib import Path

import pytest

from portal.config import SETTINGS, ConfigError, load_settings


def env(tmp_path, **values):
    return {"TRELLIS_INSTANCE_PATH": str(tmp_path), **values}


def test_defaults_are_safe_for_development(tmp_path):
    settings = load_settings(env(tmp_path))
    assert settings["ENV"] == "development"
    assert settings["COOKIE_SECURE"] is False
    assert settings["DATABASE_URL"] == f"sqlite:///{tmp_path / 'trellis.db'}"
    assert settings["ARGON2_MEMORY_KIB"] == 19456


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("TRELLIS_ARGON2_TIME_COST", "lots", "TRELLIS_ARGON2_TIME_COST: must be a whole number"),
    ("TRELLIS_ARGON2_TIME_COST", "0", "TRELLIS_ARGON2_TIME_COST: must be between 1 and 20"),
    ("TRELLIS_ENV", "staging", "TRELLIS_ENV: must be one of"),
    ("DATABASE_URL", "mysql://x", "DATABASE_URL: must be a sqlite"),
    ("REDIS_URL", "http://x", "REDIS_URL: must be a redis"),
    ("TRELLIS_COOKIE_SECURE", "maybe", "TRELLIS_COOKIE_SECURE: must be true or false"),
    ("TRELLIS_LOGIN_RATE_LIMIT", "fast", "TRELLIS_LOGIN_RATE_LIMIT: must look like"),
    ("SECRET_KEY", "short", "SECRET_KEY: must be at least 32 characters"),
])
def test_a_bad_value_stops_start_with_the_variable_named(tmp_path, variable, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_settings(env(tmp_path, **{variable: value}))


def test_production_requires_a_secret_key_and_secure_cookies(tmp_path):
    with pytest.raises(ConfigError, match="SECRET_KEY: required when TRELLIS_ENV=production"):
        load_settings(env(tmp_path, TRELLIS_ENV="production"))
    with pytest.raises(ConfigError, match="TRELLIS_COOKIE_SECURE: cannot be off"):
        load_settings(env(tmp_path, TRELLIS_ENV="production", SECRET_KEY="k" * 40,
                          TRELLIS_COOKIE_SECURE="false"))
    with pytest.raises(ConfigError, match="TRELLIS_ENCRYPTION_KEYS: required"):
        load_settings(env(tmp_path, TRELLIS_ENV="production", SECRET_KEY="k" * 40))
    from cryptography.fernet import Fernet
    key = Fernet.generate_key().decode()
    settings = load_settings(env(tmp_path, TRELLIS_ENV="production", SECRET_KEY="k" * 40,
                                 TRELLIS_ENCRYPTION_KEYS=key))
    assert settings["COOKIE_SECURE"] is True and settings["ENCRYPTION_KEYS"] == (key,)
    assert not (tmp_path / "secret_key").exists()
    assert not (tmp_path / "encryption_keys").exists()


def test_encryption_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="TRELLIS_ENCRYPTION_KEYS: each key must be a Fernet"):
        load_settings(env(tmp_path, TRELLIS_ENCRYPTION_KEYS="not-a-key"))
    generated = load_settings(env(tmp_path))["ENCRYPTION_KEYS"]
    assert len(generated) == 1 and load_settings(env(tmp_path))["ENCRYPTION_KEYS"] == generated


def test_development_secret_is_generated_once_and_kept_private(tmp_path):
    first = load_settings(env(tmp_path))["SECRET_KEY"]
    second = load_settings(env(tmp_path))["SECRET_KEY"]
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    other = load_settings({"TRELLIS_INSTANCE_PATH": str(tmp_path / "elsewhere")})
    assert other["SECRET_KEY"] != first


def test_lockout_ceiling_cannot_be_below_first_lockout(tmp_path):
    with pytest.raises(ConfigError, match="TRELLIS_LOCKOUT_MAX_SECONDS"):
        load_settings(env(tmp_path, TRELLIS_LOCKOUT_SECONDS="600",
                          TRELLIS_LOCKOUT_MAX_SECONDS="60"))


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    from portal.config import settings_table
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start, end = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
    assert start in readme and end in readme, "README lacks the settings table markers"
    table = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == settings_table(), "README settings table is stale: paste settings_table()"
    assert all(f"`{s.env}`" in table for s in SETTINGS)


def test_a_malformed_consent_purposes_file_stops_the_start(tmp_path):
    from portal.services.consent import load_purposes
    shipped = load_purposes(Path(__file__).resolve().parents[2] / "portal" /
                            "consent_purposes.yaml")
    assert [p.key for p in shipped] == ["product_news", "usage_analytics"]
    bad = tmp_path / "purposes.yaml"
    for text, problem in (("purposes: [{key: terms, version: '1', label: T}]", "not 'terms'"),
                          ("purposes: [{key: news, label: News}]", "needs a label and a version"),
                          ("purposes: [oops]", "not a mapping"),
                          ("purposes: [{key: a b}", "cannot read")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=problem):
            load_purposes(bad)


def test_a_malformed_profile_schema_stops_the_start(tmp_path):
    from portal.services.profiling import load_schema
    shipped = load_schema(Path(__file__).resolve().parents[2] / "portal" /
                          "profile_schema.yaml")
    assert [f.key for f in shipped] == ["job_title", "phone", "country"]
    assert all(not f.required_by for f in shipped)  # as shipped, no app needs anything
    bad = tmp_path / "schema.yaml"
    for text, problem in (
            ("fields: [{key: x y, label: X, purpose: P}]", "must be unique"),
            ("fields: [{key: age, label: Age, type: number, purpose: P}]", "type must be"),
            ("fields: [{key: cc, label: C, type: choice, purpose: P}]", "needs choices"),
            ("fields: [{key: tel, label: T, purpose: P, required_by: [everyone]}]",
             "required_by entries"),
            ("fields: [{key: tel, label: T}]", "needs a label and a purpose")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=problem):
            load_schema(bad)
