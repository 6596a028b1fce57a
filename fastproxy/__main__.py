"""`python -m fastproxy`: the same entry point as the `fastproxy` console script."""

from __future__ import annotations

from fastproxy.cli import main

raise SystemExit(main())
