"""A small SQLAlchemy 2 application: products in categories, orders placed through a service function."""
