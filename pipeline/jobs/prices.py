"""What an archive costs and when it pays for itself: the price table and the payback arithmetic.

    prices = load_prices(None)                                   # the built-in table (DEFAULT_PRICES)
    prices = load_prices("prices.toml")                          # a user's file over the built-in one
    payback_months(2_754_319, [60_314, 821_326], 2, 6.9, prices, "standard")   # -> months

The payback of one image (or of a run, on totals):
- monthly saving = (billable source bytes - billable stored bytes) x the class's price per GB-month,
  where every object is billed as at least the class's minimum billable size (128 KiB for S3
  Standard-IA and Glacier Instant Retrieval);
- one-time cost = CPU-seconds x vCPU-hour price + GPU-seconds x GPU-hour price + objects written x
  the class's PUT price;
- payback = one-time cost / monthly saving, in months; infinite (never) when nothing is saved.

Every price lives in the table (docs/costs.md cites where each default comes from and as of when);
the functions here only do arithmetic. Pure: no Ray, no Prefect, no storage except `load_prices`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SECONDS_PER_HOUR = 3600.0


class PriceTableError(ValueError):
    """A price file that cannot be read or does not describe a price table."""


class StorageClass(BaseModel):
    """One storage class: what a byte-month, a request and a retrieval cost."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", description="display name, e.g. 'S3 Standard'")
    gb_month: float = Field(ge=0, description="$ per GB stored for a month")
    min_object_bytes: int = Field(0, ge=0, description="every object is billed as at least this many bytes")
    put_per_1000: float = Field(ge=0, description="$ per 1,000 PUT (COPY, POST, LIST) requests")
    get_per_1000: float = Field(0.0, ge=0, description="$ per 1,000 GET requests (reading back; not in the payback)")
    retrieval_per_gb: float = Field(0.0, ge=0, description="$ per GB read back (not in the payback)")


class Prices(BaseModel):
    """The price table. Every field can be overridden by a user's JSON or TOML file (`load_prices`)."""

    model_config = ConfigDict(extra="forbid")

    as_of: str = Field(description="when these prices were list prices (a date)")
    region: str = ""
    currency: str = "USD"
    bytes_per_gb: int = Field(2**30, gt=0, description="the GB of the storage price (AWS bills binary GB)")
    vcpu_hour: float = Field(ge=0, description="$ per vCPU-hour")
    gpu_hour: float = Field(ge=0, description="$ per GPU-hour")
    storage: dict[str, StorageClass] = Field(min_length=1, description="storage classes by key")

    def storage_class(self, key: str) -> StorageClass:
        try:
            return self.storage[key]
        except KeyError:
            raise PriceTableError(f"no storage class {key!r} in the price table (it has {', '.join(self.storage)})") \
                from None


# List prices, us-east-1; sources and dates in docs/costs.md. Change them there and here together.
DEFAULT_PRICES = Prices(
    as_of="2025-06",
    region="us-east-1",
    vcpu_hour=0.0408,  # m7g.large on demand, $0.0816/h for 2 vCPUs
    gpu_hour=6.88,  # p5.48xlarge on demand, $55.04/h for 8 H100s (after AWS's June 2025 price cut)
    storage={
        "standard": StorageClass(name="S3 Standard", gb_month=0.023, put_per_1000=0.005, get_per_1000=0.0004),
        "standard_ia": StorageClass(name="S3 Standard-IA", gb_month=0.0125, min_object_bytes=128 * 1024,
                                    put_per_1000=0.01, get_per_1000=0.001, retrieval_per_gb=0.01),
        "glacier_ir": StorageClass(name="S3 Glacier Instant Retrieval", gb_month=0.004, min_object_bytes=128 * 1024,
                                   put_per_1000=0.02, get_per_1000=0.01, retrieval_per_gb=0.03),
    },
)


def _merged(base: dict, override: dict) -> dict:
    """`override` over `base`, dictionaries merged key by key (a storage class field by field)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def parse_prices(text: str | bytes, name: str, base: Prices = DEFAULT_PRICES) -> Prices:
    """The price table of a JSON or TOML file's text (TOML when `name` ends in .toml), laid over
    `base`: what the file leaves out keeps the built-in price; a new storage class is added."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text) if name.lower().endswith(".toml") else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PriceTableError(f"price table {name}: not valid {'TOML' if name.endswith('.toml') else 'JSON'}: {exc}") \
            from None
    if not isinstance(data, dict):
        raise PriceTableError(f"price table {name}: expected a table of prices, got {type(data).__name__}")
    try:
        return Prices.model_validate(_merged(base.model_dump(), data))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PriceTableError(f"price table {name}: {problems}") from None


def load_prices(uri: str | None, storage_options: dict | None = None, endpoint_url: str | None = None) -> Prices:
    """The built-in table (None), or a user's file (local path or URI) over it."""
    if not uri:
        return DEFAULT_PRICES
    from pipeline.storage import filesystem

    try:
        fs, path = filesystem(uri, storage_options or {}, endpoint_url)
        text = fs.cat_file(path)
    except (OSError, ValueError) as exc:
        raise PriceTableError(f"price table {uri}: cannot read it: {type(exc).__name__}: {exc}") from None
    return parse_prices(text, uri)


def billable_bytes(sizes: int | Iterable[int], storage: StorageClass) -> int:
    """Bytes billed for objects of these sizes (an int: one object): each at least the minimum."""
    if isinstance(sizes, int):
        sizes = (sizes,)
    return sum(max(int(s), storage.min_object_bytes) for s in sizes)


def monthly_saving(source_billable: int, stored_billable: int, prices: Prices, storage_class: str) -> float:
    """$ a month saved by keeping the stored objects instead of the source (billable bytes)."""
    return (source_billable - stored_billable) / prices.bytes_per_gb * prices.storage_class(storage_class).gb_month


def one_time_cost(objects_written: int, cpu_seconds: float, prices: Prices, storage_class: str,
                  gpu_seconds: float = 0.0) -> float:
    """$ spent once to make the archive: compute and the PUT requests of the objects written."""
    storage = prices.storage_class(storage_class)
    compute = cpu_seconds / SECONDS_PER_HOUR * prices.vcpu_hour + gpu_seconds / SECONDS_PER_HOUR * prices.gpu_hour
    return compute + objects_written / 1000 * storage.put_per_1000


def months_to_pay_back(one_time: float, saving_per_month: float) -> float:
    """Months until the saving has paid the one-time cost: infinite when nothing is saved."""
    if saving_per_month <= 0:
        return math.inf
    return one_time / saving_per_month


def payback_months(source_bytes: int | Iterable[int], stored_bytes: int | Iterable[int], objects_written: int,
                   cpu_seconds: float, prices: Prices, storage_class: str, gpu_seconds: float = 0.0) -> float:
    """Months until compute plus requests are paid back by the storage saved, in one storage class.
    `source_bytes` / `stored_bytes`: the size of each object (an int for a single object), billed
    as at least the class's minimum each. Infinite when nothing is saved."""
    storage = prices.storage_class(storage_class)
    saving = monthly_saving(billable_bytes(source_bytes, storage), billable_bytes(stored_bytes, storage), prices,
                            storage_class)
    return months_to_pay_back(one_time_cost(objects_written, cpu_seconds, prices, storage_class, gpu_seconds), saving)


if __name__ == "__main__":  # `python -m pipeline.jobs.prices`: the built-in table, a starting point for your own file
    print(DEFAULT_PRICES.model_dump_json(indent=2))
