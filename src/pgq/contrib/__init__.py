"""pgq in other libraries' idioms: SQLAlchemy sessions (``sqlalchemy``)."""
