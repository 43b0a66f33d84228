"""The Atelier gallery: SQLAlchemy records and content-addressed files. Never imports torch."""
