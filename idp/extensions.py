"""The shared extension objects (DESIGN §1): database, migrations, CSRF, translations, the OAuth server.

They are created unbound here and bound to an app in ``create_app``; the Redis client lives in ``store``.
"""
from flask_babel import Babel
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()
csrf = CSRFProtect()
babel = Babel()


@event.listens_for(Engine, "handle_error")
def _failed_ping_means_dead_connection(context) -> None:
    """``pool_pre_ping``: a ping that fails in any way means the pooled connection is dead: the pool replaces it.

    psycopg's ping can fail with "can't change 'autocommit' now" (the dialect restoring autocommit on a
    connection whose socket just died masks the OperationalError); not taken for a disconnect, it reached the
    view as a 500 while the database was down, instead of a reconnection attempt and the 503 page.
    """
    if getattr(context, "is_pre_ping", False):
        context.is_disconnect = True
