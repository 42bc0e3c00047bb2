"""pgq's schema up to its revision 0008 (results and progress).

Reversing it (``manage.py migrate pgq zero``) drops pgq's tables, and every job in them.
"""

from typing import Any

from django.db import migrations

from pgq.contrib.django.schema import downgrade_to, upgrade_to

#: The pgq revision this migration brings the schema to.
REVISION = "0008"


def forwards(apps: Any, schema_editor: Any) -> None:
    upgrade_to(REVISION, schema_editor)


def backwards(apps: Any, schema_editor: Any) -> None:
    downgrade_to("base", schema_editor)


class Migration(migrations.Migration):
    # pgq's revisions commit on a connection of their own (0005 builds an index
    # CONCURRENTLY), so Django's transaction has nothing to wrap.
    atomic = False
    initial = True
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
