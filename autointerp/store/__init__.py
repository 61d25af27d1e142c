"""The store: the DuckDB schema, its migrations and every SQL statement of the project."""
