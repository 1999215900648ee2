"""Token prices and the cost of a request (the paper's ``dollars_*`` usage fields, docs/protocol/pipeline.md §1.8).

Prices are USD per **1 million** tokens, per model name as sent in the request (``model_name``):
``input`` (uncached prompt tokens), ``cached_input`` (prompt tokens served from the provider's prompt
cache; defaults to ``input``) and ``output`` (completion tokens, reasoning included, as OpenAI-style
providers count them). ``read`` says when the price was read from the provider (``YYYY-MM`` or
``YYYY-MM-DD``): prices change, so an entry says how old it is.

The table ships in ``settings/prices.json``. Override it per entry with a JSON file of the same shape
given by path (``load_price_table(path)``) or by ``$VLM_GIST_PRICES``; its entries replace the shipped
ones model by model. A model without a price has cost **None** (unknown), never 0.

Cost of one request, with ``prompt`` = provider ``prompt_tokens`` (cached tokens included, as OpenAI
reports them) and ``cached`` = ``prompt_tokens_details.cached_tokens``::

    cost = ((prompt − cached) · input + cached · cached_input + completion · output) / 1e6

>>> table = PriceTable({"m": ModelPrice(input=2.0, cached_input=0.5, output=8.0)})
>>> from vlm_gist_dagster.protocol.completions import TokenUsage
>>> table.cost("m", TokenUsage(prompt_tokens=1000, cached_prompt_tokens=400, completion_tokens=100))
Cost(input_usd=0.0014, output_usd=0.0008)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..protocol.completions import TokenUsage
from .errors import ConfigurationError

__all__ = ["PRICES_ENV", "Cost", "ModelPrice", "PriceTable", "default_prices_path", "load_price_table"]

PRICES_ENV = "VLM_GIST_PRICES"
_READ_DATE = re.compile(r"20\d\d-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?")


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None
    #: When the price was read from the provider (``YYYY-MM`` or ``YYYY-MM-DD``), if known: provenance,
    #: not part of the price (two entries with equal prices are equal).
    read: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Cost:
    """USD of one request, split as the paper's ``dollars_input`` / ``dollars_output``."""

    input_usd: float
    output_usd: float

    @property
    def total_usd(self) -> float:
        return self.input_usd + self.output_usd


class PriceTable:
    """Model name → :class:`ModelPrice`."""

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self.prices: dict[str, ModelPrice] = dict(prices or {})

    def __contains__(self, model: object) -> bool:
        return model in self.prices

    def get(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)

    def merged(self, other: PriceTable) -> PriceTable:
        return PriceTable({**self.prices, **other.prices})

    def cost(self, model: str, usage: TokenUsage | None) -> Cost | None:
        """The cost of one request; None when the model has no price or the provider sent no usage."""
        price = self.prices.get(model)
        if (
            price is None
            or usage is None
            or (usage.prompt_tokens is None and usage.completion_tokens is None)
        ):
            return None
        prompt = usage.prompt_tokens or 0
        cached = min(usage.cached_prompt_tokens or 0, prompt)
        cached_price = price.cached_input if price.cached_input is not None else price.input
        input_usd = ((prompt - cached) * price.input + cached * cached_price) / 1e6
        output_usd = (usage.completion_tokens or 0) * price.output / 1e6
        return Cost(round(input_usd, 12), round(output_usd, 12))

    @classmethod
    def from_json(cls, data: Any, source: str) -> PriceTable:
        """Parse ``{"models": {name: {"input": x, "output": y, "cached_input": z?}}}``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise ConfigurationError(f"{source}: a price table is a JSON object with an object 'models'")
        prices: dict[str, ModelPrice] = {}
        for name, entry in data["models"].items():
            field = f"models.{name}"
            if not isinstance(entry, Mapping):
                raise ConfigurationError(
                    f"{source}: field '{field}' must be an object with 'input' and 'output'"
                )
            unknown = sorted(set(entry) - {"input", "output", "cached_input", "read", "note"})
            if unknown:
                raise ConfigurationError(f"{source}: field '{field}' has unknown key(s) {unknown}")

            def number(key: str, field: str = field, entry: Mapping = entry) -> float:
                value = entry.get(key)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise ConfigurationError(
                        f"{source}: field '{field}.{key}' must be a non-negative number (USD per 1M tokens)"
                    )
                return float(value)

            read = entry.get("read")
            if read is not None and not (isinstance(read, str) and _READ_DATE.fullmatch(read)):
                raise ConfigurationError(
                    f"{source}: field '{field}.read' must be the date the price was read, YYYY-MM or "
                    f"YYYY-MM-DD, got {read!r}"
                )
            prices[str(name)] = ModelPrice(
                input=number("input"),
                output=number("output"),
                cached_input=None if entry.get("cached_input") is None else number("cached_input"),
                read=read,
            )
        return cls(prices)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read the price table ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path}: the price table is not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))


def default_prices_path() -> Path:
    return paths.settings_dir() / "prices.json"


def load_price_table(
    override: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> PriceTable:
    """The shipped table (``settings/prices.json``, empty when missing), overridden entry by entry by
    ``override`` or, when that is None, by the file named in ``$VLM_GIST_PRICES``."""
    env = os.environ if env is None else env
    base_path = default_prices_path()
    table = PriceTable.from_file(base_path) if base_path.is_file() else PriceTable()
    override = override if override is not None else (env.get(PRICES_ENV) or None)
    if override is not None:
        table = table.merged(PriceTable.from_file(override))
    return table
