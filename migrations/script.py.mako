"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from __future__ import annotations

from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = op.get_context().config.attributes["pgq_schema"]
    op.execute(f"")


def downgrade() -> None:
    schema = op.get_context().config.attributes["pgq_schema"]
    op.execute(f"")
