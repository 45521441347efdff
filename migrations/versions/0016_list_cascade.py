"""list_cascade: the neighbour table's two foreign keys become a trigger on products

A foreign key checks every inserted row against ``products`` and locks the product's row
(``FOR KEY SHARE``), twice per list row: at a million products that was two thirds of a
build block's writing, which holds the table's one lock (BENCHMARKS.md, "A million products,
a fourth day"). What the keys gave is kept by a trigger on products: deleting a product
(or truncating them) deletes its list and its places in other lists, in the same statement,
as the cascades did. A row can no longer be refused for naming a missing product: every
writer holds the table's lock and reads the vectors after taking it, except a build block,
whose finish rebuilds when the rows changed since its plan.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS = ("product_id", "neighbour_id")
_POSTGRESQL = [
    "CREATE FUNCTION lookalike_delete_lists() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    + "; ".join(
        f"DELETE FROM neighbours WHERE {column} IN (SELECT id FROM gone)" for column in _KEYS
    )
    + "; RETURN NULL; END $$",
    "CREATE FUNCTION lookalike_clear_lists() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "DELETE FROM neighbours; RETURN NULL; END $$",
    # Once per statement: deleting a thousand products is two deletes, not two thousand.
    "CREATE TRIGGER product_lists_deleted AFTER DELETE ON products "
    "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION lookalike_delete_lists()",
    "CREATE TRIGGER product_lists_cleared AFTER TRUNCATE ON products "
    "FOR EACH STATEMENT EXECUTE FUNCTION lookalike_clear_lists()",
]
_POSTGRESQL_DROP = [
    "DROP TRIGGER product_lists_cleared ON products",
    "DROP TRIGGER product_lists_deleted ON products",
    "DROP FUNCTION lookalike_clear_lists()",
    "DROP FUNCTION lookalike_delete_lists()",
]
# SQLite has row triggers only (and no TRUNCATE).
_SQLITE = (
    "CREATE TRIGGER product_lists_deleted AFTER DELETE ON products BEGIN "
    + "; ".join(f"DELETE FROM neighbours WHERE {column} = OLD.id" for column in _KEYS)
    + "; END"
)


def _constraint(column: str) -> str:
    return f"fk_neighbours_{column}_products"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in _KEYS:
            op.drop_constraint(_constraint(column), "neighbours", type_="foreignkey")
        for statement in _POSTGRESQL:
            op.execute(statement)
        return
    with _keeping_sqlite_triggers(), op.batch_alter_table("neighbours") as batch_op:
        for column in _KEYS:
            batch_op.drop_constraint(_constraint(column), type_="foreignkey")
    op.execute(_SQLITE)


def downgrade() -> None:
    # Rows naming a product that is gone would fail the keys: the cascades would have removed them.
    for column in _KEYS:
        op.execute(f"DELETE FROM neighbours WHERE {column} NOT IN (SELECT id FROM products)")
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRESQL_DROP:
            op.execute(statement)
        for column in _KEYS:
            op.create_foreign_key(
                _constraint(column), "neighbours", "products", [column], ["id"], ondelete="CASCADE"
            )
        return
    op.execute("DROP TRIGGER product_lists_deleted")
    with _keeping_sqlite_triggers(), op.batch_alter_table("neighbours") as batch_op:
        for column in _KEYS:
            batch_op.create_foreign_key(
                _constraint(column), "products", [column], ["id"], ondelete="CASCADE"
            )


@contextlib.contextmanager
def _keeping_sqlite_triggers() -> Iterator[None]:
    """SQLite alters a table by copying it, and dropping the old one drops its triggers (the
    change counters of migration 0004): they are read before and created again after."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'neighbours'"
    )
    triggers = [sql for (sql,) in rows]
    yield
    for sql in triggers:
        op.execute(sql)
