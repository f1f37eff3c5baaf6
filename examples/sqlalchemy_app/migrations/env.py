"""Alembic's environment for the shop.

Two ways in: a caller that already holds a connection (svcenv's template setup,
``svcenv.sqlalchemy.alembic_upgrade``) passes it in ``config.attributes["connection"]``
(Alembic's cookbook recipe); otherwise the URL comes from ``SHOP_DATABASE_URL`` or
``sqlalchemy.url`` and this file builds its own engine.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from shop_sa.models import Base
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed over: svcenv's template database
        _run(connection)
        return
    section = config.get_section(config.config_ini_section, {})
    if "SHOP_DATABASE_URL" in os.environ:
        section["sqlalchemy.url"] = os.environ["SHOP_DATABASE_URL"]
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
