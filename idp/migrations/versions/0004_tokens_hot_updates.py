"""tokens: updates in place, one index fewer

Refresh rotation, revocation and logout only set a timestamp (``refresh_used_at``, ``revoked_at``,
``access_revoked_at``) that no index covers. With room left on each page (fillfactor 85) PostgreSQL makes such an
update a heap-only tuple update: the row changes in its page and none of the table's indexes is touched. Full
pages written before this revision get that room as VACUUM reclaims them. The index on ``sid`` is dropped: nothing
looks tokens up by session (grants are ended by account, client or family), and every insert paid for one more
index page on a random key. Issue 8 point 4.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_sid'))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE tokens SET (fillfactor = 85)')


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE tokens RESET (fillfactor)')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_sid'), ['sid'], unique=False)
