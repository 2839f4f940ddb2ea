"""The shared extension objects (DESIGN §1): database, migrations, CSRF, translations, the OAuth server.

They are created unbound here and bound to an app in ``create_app``; the Redis client lives in ``store``.
"""
from flask_babel import Babel
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()
csrf = CSRFProtect()
babel = Babel()

