"""``[storage] database`` as a PostgreSQL URL: accepted with its lease, refused with the field named and
never with the password shown."""
from __future__ import annotations

import pytest

from edgeloop.config import ConfigError, parse_cloud_config


def cloud(database: str, **storage):
    return parse_cloud_config({"storage": {"database": database, **storage}}, source="c.toml", base_dir="/tmp/x")


def test_a_postgres_url_selects_postgres_with_its_lease_and_the_default_stays_sqlite():
    config = cloud("postgresql://edgeloop@127.0.0.1:5432/fleet", lease_s=2.5)
    assert config.database == "postgresql://edgeloop@127.0.0.1:5432/fleet" and config.lease_s == 2.5
    assert str(config.artifact_dir) == "/tmp/x/artifacts"
    assert cloud("postgresql://u@/fleet?host=/run/pg").database.endswith("host=/run/pg")
    sqlite = cloud("db/c.sqlite")
    assert str(sqlite.database) == "/tmp/x/db/c.sqlite" and sqlite.lease_s == 10.0


@pytest.mark.parametrize("url, says", [
    ("mysql://u:hunter2@h/db", "scheme 'mysql' is not postgresql"),
    ("postgresql://u:hunter2@/db", "names no host"),
    ("postgresql://u:hunter2@h:5432", "names no database"),
    ("postgresql://u:hunter2@h:99999/db", "Port out of range"),
])
def test_a_bad_url_names_the_field_and_hides_the_password(url, says):
    with pytest.raises(ConfigError) as info:
        cloud(url)
    assert info.value.key == "storage.database" and says in str(info.value)
    assert "hunter2" not in str(info.value) and "u:***@" in str(info.value)


def test_lease_s_is_checked():
    with pytest.raises(ConfigError) as info:
        cloud("postgresql://u@h/db", lease_s=0.1)
    assert info.value.key == "storage.lease_s" and "0.1" in str(info.value)
