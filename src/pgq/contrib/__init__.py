"""pgq in other frameworks' idioms: Django's tasks framework (``django``).

Each integration is an extra (``pip install 'pgq-jobs[django]'``) and none is imported
by pgq's core.
"""
