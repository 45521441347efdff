"""Find by name: GET /api/products?q=, the catalogue's search box, and the text index behind
them on each database (migration 0009)."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.catalogue_queries import _matching, browse_products
from core.models import Product
from core.uploads import take_back
from tests.test_pages import BROWSER, page

NAMES = {
    "1": ("White Polo T-shirt", "Tshirts", "White"),
    "2": ("Navy POLO shirt", "Shirts", "Navy Blue"),
    "3": ("White linen shirt", "Shirts", "White"),
    "4": ("Red 50% off_cap", "Caps", "Red"),
    "5": ("Black polos for men", "Tshirts", "Black"),
}


def _add(session: Session) -> None:
    for pid, (name, kind, colour) in NAMES.items():
        meta = {"productDisplayName": name, "articleType": kind, "baseColour": colour, "year": 2012}
        session.add(Product(id=pid, meta=meta, image_path=f"/{pid}.jpg", content_hash=pid))
    session.flush()


def _ids(session: Session, query: str, **filters: str) -> list[str]:
    return [p.id for p in browse_products(session, filters, 1, 50, query).items]


def test_words_match_any_text_metadata_case_insensitively(db_session: Session) -> None:
    _add(db_session)
    assert _ids(db_session, "white polo") == ["1"]
    assert _ids(db_session, "POLO") == ["1", "2", "5"]  # "polos" holds "polo"
    assert _ids(db_session, "  polo   ", articleType="Tshirts") == ["1", "5"]
    assert _ids(db_session, "navy blue") == ["2"]  # the colour, another text field
    assert _ids(db_session, "2012") == list(NAMES)  # numbers are text too
    assert _ids(db_session, "articletype") == []  # keys are not searched
    assert _ids(db_session, "50%") == ["4"] and _ids(db_session, "%") == ["4"]
    assert _ids(db_session, "f_c") == ["4"] and _ids(db_session, "_") == ["4"]
    assert _ids(db_session, "") == list(NAMES)
    assert _ids(db_session, "polo sweater") == []

    # Kept current through metadata changes and deletes (the ORM listener, the FTS triggers).
    product = db_session.get_one(Product, "3")
    product.meta = {**product.meta, "productDisplayName": "White linen polo"}
    db_session.flush()
    assert _ids(db_session, "linen polo") == ["3"]
    db_session.delete(db_session.get_one(Product, "1"))
    db_session.flush()
    assert _ids(db_session, "white polo") == ["3"]


def test_the_search_uses_each_databases_text_index(db_session: Session) -> None:
    _add(db_session)
    words = _matching(db_session, select(Product.id), ["white", "polo"])
    compiled = words.compile(db_session.get_bind())
    connection = db_session.connection()
    if _postgresql(db_session):
        db_session.execute(text("SET LOCAL enable_seqscan = off"))
        found = connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
        plan = " ".join(row[0] for row in found)
        assert "ix_products_search_trgm" in plan, plan
    else:
        values = tuple(compiled.params[name] for name in compiled.positiontup or ())
        found = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values)
        plan = " ".join(str(row[-1]) for row in found)
        # M: the MATCH constraint answered by the FTS index (a scan would read "INDEX 0:").
        assert plan.count("products_search VIRTUAL TABLE INDEX 0:M") == 2, plan


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def test_taking_back_an_upload_keeps_the_search_current(db_session: Session) -> None:
    from core.uploads import Photo

    _add(db_session)
    params = {
        "product_ids": ["2"],
        "previous": {"2": Photo("/2.jpg", "2", {"productDisplayName": "Green scarf"}).as_params()},
        "photos": {"2": Photo("/new.jpg", "new").as_params()},
    }
    product = db_session.get_one(Product, "2")
    product.content_hash, product.image_path = "new", "/new.jpg"
    db_session.flush()
    take_back(db_session, params, ["2"], metadata=True)
    db_session.expire_all()
    assert _ids(db_session, "green scarf") == ["2"] and _ids(db_session, "navy") == []


def test_api_and_catalogue_page_search_by_name(tmp_path: Path) -> None:
    from core.db import make_engine, make_sessionmaker
    from migrations import upgrade
    from web import create_app

    url = f"sqlite:///{tmp_path / 'search.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        _add(session)
        session.commit()
    engine.dispose()
    app = create_app({"database_url": url, "media_dir": tmp_path / "media"})
    client: FlaskClient = app.test_client()
    found = client.get("/api/products?q=white+polo").get_json()
    assert [p["id"] for p in found["items"]] == ["1"] and found["total"] == 1
    both = client.get("/api/products?q=polo&articleType=Tshirts&per_page=1").get_json()
    assert [p["id"] for p in both["items"]] == ["1"] and both["total"] == 2
    assert client.get("/api/products?q=" + "x" * 201).status_code == 400

    html = page(client, "/?q=polo&articleType=Tshirts&per_page=1")
    assert 'value="polo"' in html and "named like" in html
    assert 'href="/?page=2&amp;' in html and "q=polo" in html.split('rel="next"', 1)[1][:200]
    empty = client.get("/?q=sweater", headers=BROWSER).get_data(as_text=True)
    assert "No products named like" in empty
    app.extensions["lookalike.engine"].dispose()
