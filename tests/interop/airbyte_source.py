"""A small Airbyte source connector for tarn's tests, speaking the protocol as its docs
describe it (one JSON message per line on stdout): spec, check, discover, read.

One stream, `items` (primary key `id`, cursor `id`), with the columns tarn maps: integer,
number, string, boolean, date, date-time, a nested object, an array, and a free-form value;
optionally a second stream `others` of the same shape. Records are deterministic: record i
has id i (in each stream, interleaved: items i, others i, items i+1, ...). A STATE message
follows every `state_every` positions and covers exactly the records before it: per stream
({"cursor": last id}), or one GLOBAL state (shared_state {"position": last id} and every
stream's state), or one LEGACY state (data {"position": last id}); `read --state F` resumes
after it. So the connector's own output with the same state is the ground truth of what a
sync must hold.

Config (JSON):
  count        ids 1..count (default 10)
  state_every  records between STATE messages (default 5)
  sleep_ms     pause after each STATE message (default 0)
  fail         what goes wrong after `fail_after` records: "crash" (exit 1, a message on
               stderr), "trace" (an error TRACE naming the stream, then exit 1), "malformed"
               (a truncated JSON line), "violate" (a record whose id is not an integer)
  fail_after   default 3
  warn         a WARN LOG message to emit before the records
  updates      also emit ids 1..updates again (name "updated") after the others
  streams      the streams: ["items"] (default) or ["items", "others"]
  state_kind   "STREAM" (default), "GLOBAL" or "LEGACY"
  versions     records emitted after the others, each {"id", "seq", "name"} (the column `seq`
               is a cursor a configured catalog can name; it is null in the other records)
"""
import json
import sys
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": ["null", "string"]},
        "price": {"type": "number"},
        "active": {"type": "boolean"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time", "airbyte_type": "timestamp_with_timezone"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {},
        "seq": {"type": ["null", "integer"]},
    },
}


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def arg(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def record(i, name=None):
    return {
        "id": i,
        "name": name or f"item {i}",
        "price": i * 1.5,
        "active": i % 2 == 0,
        "day": f"2026-01-{(i % 28) + 1:02d}",
        "at": f"2026-01-01T00:00:{i % 60:02d}+00:00",
        "address": {"city": f"city {i % 3}", "zip": 1000 + i},
        "tags": [f"t{i % 2}", "all"],
        "extra": {"n": i} if i % 2 else [i],
    }


def main():
    command = sys.argv[1]
    if command == "spec":
        emit({"type": "SPEC", "spec": {"connectionSpecification": {"type": "object", "properties": {"count": {"type": "integer"}}}}})
        return
    config = json.load(open(arg("--config")))
    if command == "check":
        ok = config.get("count", 10) >= 0
        emit({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED" if ok else "FAILED", "message": "count must not be negative"}})
        return
    streams = [{
        "name": name,
        "json_schema": SCHEMA,
        "supported_sync_modes": ["full_refresh", "incremental"],
        "source_defined_cursor": True,
        "default_cursor_field": ["id"],
        "source_defined_primary_key": [["id"]],
    } for name in config.get("streams", ["items"])]
    if command == "discover":
        emit({"type": "CATALOG", "catalog": {"streams": streams}})
        return
    assert command == "read", command
    json.load(open(arg("--catalog")))
    names = config.get("streams", ["items"])
    kind = config.get("state_kind", "STREAM")
    cursors = {n: 0 for n in names}
    if arg("--state"):
        given = json.load(open(arg("--state")))
        if isinstance(given, dict):
            # LEGACY: the bare data blob.
            cursors = {n: given["position"] for n in names}
        else:
            for state in given:
                if state.get("type") == "GLOBAL":
                    cursors = {n: state["global"]["shared_state"]["position"] for n in names}
                elif state["stream"]["stream_descriptor"]["name"] in cursors:
                    cursors[state["stream"]["stream_descriptor"]["name"]] = state["stream"]["stream_state"]["cursor"]
    cursor = min(cursors.values())
    emit({"type": "LOG", "log": {"level": "INFO", "message": f"reading after {cursors}"}})
    count, every = config.get("count", 10), config.get("state_every", 5)
    for n in names:
        emit({"type": "TRACE", "trace": {"type": "STREAM_STATUS", "emitted_at": time.time() * 1000,
              "stream_status": {"stream_descriptor": {"name": n}, "status": "STARTED"}}})
        emit({"type": "TRACE", "trace": {"type": "ESTIMATE", "emitted_at": time.time() * 1000,
              "estimate": {"name": n, "type": "STREAM", "row_estimate": count}}})
    if config.get("warn"):
        emit({"type": "LOG", "log": {"level": "WARN", "message": config["warn"]}})
    fail, fail_after = config.get("fail"), config.get("fail_after", 3)

    def state(position):
        if kind == "GLOBAL":
            emit({"type": "STATE", "state": {"type": "GLOBAL", "global": {
                "shared_state": {"position": position},
                "stream_states": [{"stream_descriptor": {"name": n}, "stream_state": {"cursor": position}} for n in names]}}})
        elif kind == "LEGACY":
            emit({"type": "STATE", "state": {"type": "LEGACY", "data": {"position": position}}})
        else:
            for n in names:
                emit({"type": "STATE", "state": {"type": "STREAM", "stream": {"stream_descriptor": {"name": n}, "stream_state": {"cursor": position}}}})

    rows = [(i, None) for i in range(cursor + 1, count + 1)]
    rows += [(i, "updated") for i in range(1, config.get("updates", 0) + 1)]
    sent = 0
    for i, name in rows:
        if fail and sent == fail_after:
            if fail == "crash":
                sys.stderr.write("items: lost the connection to the source database\n")
                sys.exit(1)
            if fail == "trace":
                emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": time.time() * 1000, "error": {
                    "message": "the API refused the token", "internal_message": "HTTP 401",
                    "failure_type": "config_error", "stream_descriptor": {"name": "items"}}}})
                sys.exit(1)
            if fail == "malformed":
                sys.stdout.write('{"type": "RECORD", "record": {"stream": "items", "data": {"id": \n')
                sys.stdout.flush()
                time.sleep(5)
                sys.exit(0)
            if fail == "violate":
                emit({"type": "RECORD", "record": {"stream": "items", "data": dict(record(i), id="not-a-number"), "emitted_at": int(time.time() * 1000)}})
                fail = None
                continue
        for n in names:
            if name is not None or i > cursors[n]:
                emit({"type": "RECORD", "record": {"stream": n, "data": record(i, name), "emitted_at": int(time.time() * 1000)}})
        sent += 1
        if sent % every == 0:
            state(i if name is None else count)
            if config.get("sleep_ms"):
                time.sleep(config["sleep_ms"] / 1000)
    for v in config.get("versions", []):
        emit({"type": "RECORD", "record": {"stream": "items", "data": dict(record(v["id"], v["name"]), seq=v["seq"]),
              "emitted_at": int(time.time() * 1000)}})
    state(count if rows or config.get("versions") else cursor)
    for n in names:
        emit({"type": "TRACE", "trace": {"type": "STREAM_STATUS", "emitted_at": time.time() * 1000,
              "stream_status": {"stream_descriptor": {"name": n}, "status": "COMPLETE"}}})

if __name__ == "__main__":
    main()
