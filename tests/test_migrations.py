"""The schema is the migrations' (issue 2 point 4): the models and the migrated database must not drift."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from idp.extensions import db


def test_models_match_the_migrated_schema(app):
    with app.app_context():
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                   "render_as_batch": True})
            diff = compare_metadata(context, db.metadata)
    assert diff == [], f"models and migrations drift; run `flask --app wsgi db migrate`: {diff}"


def test_downgrade_and_upgrade_round_trip(make_app, tmp_path, keys_dir):
    from flask_migrate import downgrade, upgrade
    from .conftest import base_config
    from idp import create_app
    app = create_app(base_config(f"sqlite:///{tmp_path}/roundtrip.db", keys_dir))
    with app.app_context():
        upgrade()
        downgrade(revision="base")
        upgrade()
        with db.engine.connect() as connection:
            assert "tokens" in db.inspect(connection).get_table_names()


def test_token_rows_leave_room_for_updates_in_place(app):
    """Migration 0004: setting a token's timestamps must not touch the indexes (PostgreSQL's heap-only updates need
    room on the page); SQLite has no such setting."""
    with app.app_context():
        with db.engine.connect() as connection:
            if connection.dialect.name != "postgresql":
                pytest.skip("a PostgreSQL storage setting")
            options = connection.exec_driver_sql(
                "SELECT reloptions FROM pg_class WHERE relname = 'tokens' AND relkind = 'r'").scalar()
            indexes = {row[0] for row in connection.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'tokens'")}
    assert "fillfactor=85" in (options or [])
    assert not any("(sid)" in definition for definition in indexes)
