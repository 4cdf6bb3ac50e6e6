"""ichnode.config: precedence, validation errors naming the key, the shipped config file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ichnode.config import Settings, load_settings
from ichnode.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_work_on_one_machine(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.ae_title, s.bind, s.port) == ("ICHNODE", "127.0.0.1", 11112)
    assert s.db_url == "sqlite:///var/ichnode.db" and s.model is None


def test_precedence_is_defaults_file_env_flags(monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'port = 2000\nae_title = "FILE"\nworkers = 3\n[selection]\norientation_tolerance_deg = 7\n'
    )
    monkeypatch.setenv("ICHNODE_PORT", "3000")
    monkeypatch.setenv("ICHNODE_SELECTION__ORIENTATION_TOLERANCE_DEG", "9")
    s = load_settings(cfg, port=4000)
    assert s.port == 4000  # flag beats env
    assert s.ae_title == "FILE" and s.workers == 3  # file beats defaults
    assert s.selection.orientation_tolerance_deg == 9  # env beats file
    monkeypatch.delenv("ICHNODE_PORT")
    assert load_settings(cfg).port == 2000


def test_config_env_variable_names_the_file(monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = 2001\n")
    monkeypatch.setenv("ICHNODE_CONFIG", str(cfg))
    assert load_settings().port == 2001


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("port = 'abc'", "port"),
        ("port = 70000", "port"),
        ("ae_title = 'MUCH_TOO_LONG_AE_TITLE'", "ae_title"),
        ("device = 'gpu'", "device"),
        ("db_url = 'mysql://x'", "db_url"),
        ("prot = 11112", "prot"),
        (
            "[selection]\nseries_description_exclude = '(unclosed'",
            "selection.series_description_exclude",
        ),
    ],
)
def test_invalid_setting_is_one_line_naming_the_key(tmp_path, text, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    message = str(err.value)
    assert "\n" not in message and re.search(rf"\b{re.escape(key)}\b", message)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_broken_toml_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match="c.toml"):
        load_settings(cfg)


def test_shipped_config_equals_the_defaults():
    assert load_settings(REPO / "config" / "ichnode.toml") == Settings()


def test_shipped_config_mentions_every_setting():
    text = (REPO / "config" / "ichnode.toml").read_text()
    for name, field in Settings.model_fields.items():
        assert re.search(rf"^#?\s*\[*{name}\b", text, re.M), f"{name} is not in config/ichnode.toml"
        sub = getattr(field.annotation, "model_fields", None)
        for subname in sub or {}:
            assert re.search(rf"^#?\s*{subname}\b", text, re.M), f"{name}.{subname} missing"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[notify]]\nname = "ris"\nkind = "hl7v2"\n', "an hl7v2 receiver needs host and port"),
        ('[[notify]]\nname = "ehr"\nkind = "fhir"\n', "a fhir receiver needs url"),
        ('[[notify]]\nname = "x"\nkind = "smtp"\nurl = "http://a"\n', "notify.0.kind"),
        ('[[notify]]\nname = "ehr"\nkind = "fhir"\nurl = "ftp://a"\n', "expected an http"),
        (
            '[[notify]]\nname = "a"\nkind = "fhir"\nurl = "http://a"\n'
            '[[notify]]\nname = "a"\nkind = "fhir"\nurl = "http://b"\n',
            "repeated: a",
        ),
        ('[[destinations]]\nname = "web"\nkind = "dicomweb"\n', "a dicomweb destination needs url"),
        ('[[destinations]]\nname = "pacs"\nhost = "h"\nport = 104\n', "needs ae_title, host"),
    ],
)
def test_notify_and_dicomweb_settings_are_checked(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(cfg)


def test_a_dicomweb_destination_and_notify_receivers_load(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[destinations]]\nname = "web"\nkind = "dicomweb"\nurl = "https://pacs/dicom-web/"\n'
        'token = "t"\n'
        '[[notify]]\nname = "ris"\nkind = "hl7v2"\nhost = "10.0.0.7"\nport = 2575\n'
    )
    s = load_settings(cfg)
    assert s.destinations[0].url == "https://pacs/dicom-web"
    assert s.notify[0].when == "flagged" and s.notify[0].receiving_application == "RIS"
