"""FiftyOne in the tests uses the session's own MongoDB (``fiftyone_db``), which answered before the first
test ran, and not a database service of FiftyOne's choosing that another session may own."""

from __future__ import annotations

import pymongo


def test_fiftyone_uses_the_sessions_own_database(fiftyone_database):
    import fiftyone as fo
    import fiftyone.core.odm.database as fod

    assert fiftyone_database and fiftyone_database.startswith("mongodb://127.0.0.1:")
    assert fo.config.database_uri == fiftyone_database
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath="/nonexistent/image.jpg"))
    assert fod._db_service is None  # FiftyOne started no service of its own
    client = pymongo.MongoClient(fiftyone_database, serverSelectionTimeoutMS=5000)
    try:
        names = client[fo.config.database_name]["datasets"].distinct("name")
    finally:
        client.close()
    assert dataset.name in names
    dataset.delete()
