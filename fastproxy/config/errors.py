"""The one error a bad start-up setting raises.

Flags, environment variables and resource files all report through
`ConfigError`, so the CLI can print one line and exit instead of a traceback.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting the sidecar cannot start with; the message names where it came from."""
