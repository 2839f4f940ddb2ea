"""Development-only pages (SPEC §3 "in development an outbox that a developer can read"; issue 3 point 8).

``/dev/outbox`` lists the SMS and e-mails the outbox sender wrote, newest first, so a developer can follow a flow
that sends codes without a phone. The blueprint is registered only when ``DEPLOYMENT`` is ``development``; anywhere
else the page does not exist (404), and the view checks again in case the setting changed after start-up.
"""
from __future__ import annotations

import time

from flask import Blueprint, abort, current_app, render_template

from . import senders

bp = Blueprint("devpages", __name__, url_prefix="/dev")


def init_app(app) -> None:
    if app.config["DEPLOYMENT"] == "development":
        app.register_blueprint(bp)


@bp.get("/outbox")
def outbox():
    if current_app.config["DEPLOYMENT"] != "development":
        abort(404)
    messages = [dict(m, when=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("sent_at", 0))))
                for m in senders.read_outbox(limit=100)]
    return render_template("dev/outbox.html", title="Outbox", messages=messages, path=senders.outbox_path())
