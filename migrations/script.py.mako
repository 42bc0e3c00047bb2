"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import revision_schema

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = revision_schema()
    op.execute(f"")


def downgrade() -> None:
    schema = revision_schema()
    op.execute(f"")
