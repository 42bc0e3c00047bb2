"""pgq apps that ``pgq work`` subprocesses load in the worker tests (``tests.apps.ledger:app``)."""
