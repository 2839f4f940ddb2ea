"""access tokens found by their hash

Userinfo, introspection and revocation find an access token by the SHA-256 of the presented JWT (one indexed
lookup, no signature to verify: a match proves it is byte for byte a token we issued), as refresh tokens are
found. Access tokens issued before this revision have no hash and are refused from now on: they live at most
ACCESS_TOKEN_TTL (10 minutes by default) and their clients get new ones with their refresh tokens, which keep
working.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 21:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('access_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_tokens_access_hash'), ['access_hash'])


def downgrade():
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_tokens_access_hash'), type_='unique')
        batch_op.drop_column('access_hash')
