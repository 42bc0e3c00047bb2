"""pgq in other libraries' and frameworks' idioms: SQLAlchemy sessions (``sqlalchemy``) and
Django's tasks framework (``django``).

Each integration that needs a library pgq does not install is an extra
(``pip install 'pgq-jobs[django]'``), and none is imported by pgq's core.
"""
