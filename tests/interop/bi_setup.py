"""Creates the lake tables the BI-tool tests read, through `tarn serve`'s Iceberg REST catalog
with pyiceberg (as another engine would): usage `bi_setup.py --uri URI`.

- `shop.orders`: identifier field `id` (the primary key, as a CDC table has), a table comment
  (property `comment`) and column docs, one row;
- `shop.every_type`: a column of each Iceberg primitive type tarn stores, one row of values and
  one of NULLs.

Prints `{"created": [...]}`.
"""
import argparse
import datetime
import decimal
import json
import uuid

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    args = parser.parse_args()
    catalog = RestCatalog("tarn", uri=args.uri)
    catalog.create_namespace_if_not_exists("shop")

    orders = Schema(
        NestedField(1, "id", LongType(), required=True, doc="order number"),
        NestedField(2, "customer", StringType(), required=False, doc="who ordered"),
        NestedField(3, "total", DecimalType(12, 2), required=False),
        NestedField(4, "placed_at", TimestamptzType(), required=False),
        identifier_field_ids=[1],
    )
    table = catalog.create_table("shop.orders", orders, properties={"comment": "orders placed in the shop"})
    table.append(
        pa.table(
            {
                "id": pa.array([1], pa.int64()),
                "customer": ["ada"],
                "total": pa.array([decimal.Decimal("12.50")], pa.decimal128(12, 2)),
                "placed_at": pa.array([datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)], pa.timestamp("us", tz="UTC")),
            },
            schema=table.schema().as_arrow(),
        )
    )

    every = Schema(
        NestedField(1, "c_boolean", BooleanType(), required=False),
        NestedField(2, "c_int", IntegerType(), required=False),
        NestedField(3, "c_long", LongType(), required=False),
        NestedField(4, "c_float", FloatType(), required=False),
        NestedField(5, "c_double", DoubleType(), required=False),
        NestedField(6, "c_decimal", DecimalType(10, 3), required=False),
        NestedField(7, "c_date", DateType(), required=False),
        NestedField(8, "c_time", TimeType(), required=False),
        NestedField(9, "c_timestamp", TimestampType(), required=False),
        NestedField(10, "c_timestamptz", TimestamptzType(), required=False),
        NestedField(11, "c_string", StringType(), required=False),
        NestedField(12, "c_uuid", UUIDType(), required=False),
        NestedField(13, "c_fixed", FixedType(3), required=False),
        NestedField(14, "c_binary", BinaryType(), required=False),
    )
    table = catalog.create_table("shop.every_type", every)
    arrow = table.schema().as_arrow()
    values = {
        "c_boolean": [True, None],
        "c_int": [42, None],
        "c_long": [9_000_000_000, None],
        "c_float": [1.5, None],
        "c_double": [2.25, None],
        "c_decimal": [decimal.Decimal("1234.567"), None],
        "c_date": [datetime.date(2026, 3, 4), None],
        "c_time": [datetime.time(5, 6, 7, 890000), None],
        "c_timestamp": [datetime.datetime(2026, 3, 4, 5, 6, 7, 890000), None],
        "c_timestamptz": [datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.timezone.utc), None],
        "c_string": ["héllo", None],
        "c_uuid": [uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, None],
        "c_fixed": [b"abc", None],
        "c_binary": [b"\x00\x01\xff", None],
    }
    table.append(pa.table({name: pa.array(v, arrow.field(name).type) for name, v in values.items()}, schema=arrow))
    print(json.dumps({"created": ["shop.orders", "shop.every_type"]}))


if __name__ == "__main__":
    main()
