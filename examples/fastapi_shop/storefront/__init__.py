"""The FastAPI example's application: tasks and the HTTP API."""
