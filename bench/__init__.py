"""
Performance benchmark: this project's trigger beside the amazon provider's ``SqsSensorTrigger``.

``python -m bench [--quick] [--skip-e2e] ...`` (or ``make bench``): see ``bench/__main__.py`` and
``docs/performance.md``. Not part of ``make test``.
"""

from __future__ import annotations
