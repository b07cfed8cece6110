"""An OpenAI-compatible proxy on FastAPI, storing its tokens with ``llm_proxy_db.aio``.

app = create_app(FullConfig(driver="sqlite", path="data/llm-proxy.db"))
# uvicorn llm_proxy_fastapi:app  (the database from the environment)
"""

from ._app import AUDIT_ACTION, AUDIT_WRITER, Upstream, canned_upstream, create_app

__all__ = ["AUDIT_ACTION", "AUDIT_WRITER", "Upstream", "canned_upstream", "create_app"]
