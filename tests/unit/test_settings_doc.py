from pathlib import Path

from glimpse.settings_doc import iter_settings, settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_description():
    missing = [env for env, _, doc in iter_settings() if not doc]
    assert missing == []


def test_readme_settings_table_is_current():
    """Regenerate with: .venv/bin/python scripts/update_readme_settings.py"""
    assert settings_markdown() in README.read_text()


def test_secrets_are_not_shown_as_defaults():
    rows = {env: default for env, default, _ in iter_settings()}
    assert rows["GLIMPSE_SERVER__PORT"] == "8080"
    assert all("SecretStr('" not in d for d in rows.values())
