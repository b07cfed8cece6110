"""``python -m llm_proxy_db.cli``: the same as the ``llm-proxy-db`` console script."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
