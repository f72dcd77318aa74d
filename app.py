"""The asyncproc ASGI app: `python app.py` serves it, `uvicorn app:app` too."""

from __future__ import annotations

import sys

from asyncproc.cli import main
from asyncproc.server import create_app

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))

app = create_app()
