"""The schema is the migrations' (issue 2 point 4): the models and the migrated database must not drift."""
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
