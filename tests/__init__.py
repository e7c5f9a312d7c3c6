"""apiauth's tests. Shared helpers are modules of this package, imported as
`from tests.<module> import ...`: `databases` (SQLite and PostgreSQL per test), `servers`
(the thread-hosted live server, hook receivers), `in_process` (the fast tier's in-process
app and clock), `consent`, `processes`, `live_site`, `leak_search`, `stored_connections`.
`conftest.py` holds only fixtures."""
