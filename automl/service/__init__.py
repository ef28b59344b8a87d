"""The HTTP API (`automl serve`): submit searches, follow their progress, query best policies.

A thin face over `automl.query` (reads) and `automl search` run as a subprocess (writes), so the
API and the CLI answer the same question the same way.
"""

from automl.service.app import create_app

__all__ = ["create_app"]
