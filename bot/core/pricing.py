"""What tokens cost: a price table per model, in US dollars per million tokens.

Pure. Used by the daily spend cap (issue 4) and by digests and metrics (issue 5), so
every figure of spend the bot shows comes from the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import SettingsError


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float


# List prices at the time of writing; override with ROUTINES_PRICES.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
}
FALLBACK = "claude-sonnet-4-5"  # an unknown model is priced like the default model


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]
    fallback: Price

    @classmethod
    def default(cls) -> PriceTable:
        return cls(dict(DEFAULT_PRICES), DEFAULT_PRICES[FALLBACK])

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.prices.get(model, self.fallback)
        return (input_tokens * price.input_per_million
                + output_tokens * price.output_per_million) / 1_000_000

    @classmethod
    def parse(cls, text: str) -> PriceTable:
        """`model=IN/OUT,...` (dollars per million tokens) on top of the defaults."""
        table = cls.default()
        for item in filter(None, (part.strip() for part in text.split(","))):
            model, _, pair = item.partition("=")
            raw_in, _, raw_out = pair.partition("/")
            try:
                table.prices[model.strip()] = Price(float(raw_in), float(raw_out))
            except ValueError:
                raise SettingsError(f"ROUTINES_PRICES: cannot read {item!r}; "
                                    "expected model=INPUT/OUTPUT dollars per million "
                                    "tokens") from None
        return table
