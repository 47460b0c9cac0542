"""Layers the bench measures beside ours on PostgreSQL: a bare psycopg yardstick and a
factory that runs channels_postgres outside a Django project."""
