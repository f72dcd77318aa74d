"""The progress page (static files served by the app)."""
