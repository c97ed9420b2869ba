"""What the digest tests build on: the end of their period and a price table."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.core.pricing import Price, PriceTable

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PRICES = PriceTable({"cheap": Price(1.0, 2.0), "dear": Price(10.0, 20.0)}, Price(3.0, 15.0))
