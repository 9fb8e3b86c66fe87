"""The data formats of syncd: the taskdef YAML (pydantic) and the database tables (SQLAlchemy)."""
