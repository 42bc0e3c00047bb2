"""pgq's schema up to its revision 0009 (the enqueuer's trace context, stored with its job).

Reversing it (``manage.py migrate pgq 0001``) takes pgq's schema back to 0008.
"""

from typing import Any

from django.db import migrations

from pgq.contrib.django.schema import downgrade_to, upgrade_to

#: The pgq revision this migration brings the schema to.
REVISION = "0009"
#: The one the migration before brought it to, where reversing this one goes back to.
PREVIOUS_REVISION = "0008"


def forwards(apps: Any, schema_editor: Any) -> None:
    upgrade_to(REVISION, schema_editor)


def backwards(apps: Any, schema_editor: Any) -> None:
    downgrade_to(PREVIOUS_REVISION, schema_editor)


class Migration(migrations.Migration):
    # As 0001: pgq's revisions commit on a connection of their own.
    atomic = False
    dependencies = [("pgq", "0001_pgq_schema")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
