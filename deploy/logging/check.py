#!/usr/bin/env python3
"""Checks the Fluent Bit configurations in this directory without Fluent Bit (no Debian
package on the project's machines): each file is YAML in Fluent Bit's layout (service,
pipeline inputs/filters/outputs), every plugin is one Fluent Bit has and every key one it
documents for that plugin; and, given tarn's JSON log lines (a file, one line each), what the
configurations expect of a record holds for each line: the grep filter keeps it, the fields
the outputs and filters read exist (level, target, timestamp, span), the timestamp parses with
the parser's format. Lines the grep filter drops (other libraries') are only counted out.

Usage: check.py [LOG_LINES_FILE]     exits non-zero on the first problem, naming it.
"""

import datetime
import json
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent

# Keys of each plugin the configurations use, from Fluent Bit's documentation (v3/v4).
COMMON = {"name", "match", "tag", "alias", "log_level"}
PLUGINS = {
    "inputs": {
        "tail": {"path", "multiline.parser", "db", "mem_buf_limit", "skip_long_lines", "parser", "refresh_interval"},
    },
    "filters": {
        "kubernetes": {"merge_log", "keep_log", "labels", "annotations", "kube_url", "merge_log_key"},
        "grep": {"regex", "exclude", "logical_op"},
        "nest": {"operation", "nested_under", "add_prefix", "wildcard", "nest_under", "remove_prefix"},
        "parser": {"key_name", "parser", "reserve_data", "preserve_key"},
    },
    "outputs": {
        "loki": {"host", "port", "labels", "label_keys", "remove_keys", "line_format", "auto_kubernetes_labels", "tls", "uri", "tenant_id"},
        "es": {"host", "port", "index", "logstash_format", "logstash_prefix", "time_key", "suppress_type_name", "replace_dots", "trace_error", "tls", "http_user", "http_passwd"},
    },
}
PARSER_KEYS = {"name", "format", "regex", "time_key", "time_format", "time_keep"}


def fail(message):
    print(f"check.py: {message}", file=sys.stderr)
    sys.exit(1)


def check_file(path):
    config = yaml.safe_load(path.read_text())
    if set(config) != {"service", "pipeline"}:
        fail(f"{path.name}: top-level keys {sorted(config)}, expected service and pipeline")
    parsers_file = config["service"].get("parsers_file")
    if parsers_file and not (HERE / parsers_file).exists():
        fail(f"{path.name}: service.parsers_file {parsers_file} does not exist here")
    pipeline = config["pipeline"]
    for section, entries in pipeline.items():
        if section not in PLUGINS:
            fail(f"{path.name}: pipeline.{section} is not inputs, filters or outputs")
        for i, entry in enumerate(entries):
            name = entry.get("name")
            known = PLUGINS[section].get(name)
            if known is None:
                fail(f"{path.name}: pipeline.{section}[{i}]: plugin {name!r} is not one checked here")
            unknown = set(entry) - known - COMMON
            if unknown:
                fail(f"{path.name}: pipeline.{section}[{i}] ({name}): unknown keys {sorted(unknown)}")
            if section != "inputs" and "match" not in entry:
                fail(f"{path.name}: pipeline.{section}[{i}] ({name}): no match")
    return config


def check_parsers():
    parsers = yaml.safe_load((HERE / "parsers.yaml").read_text())["parsers"]
    for p in parsers:
        unknown = set(p) - PARSER_KEYS
        if unknown:
            fail(f"parsers.yaml: {p.get('name')}: unknown keys {sorted(unknown)}")
        re.compile(p["regex"].replace("(?<", "(?P<"))
    return {p["name"]: p for p in parsers}


def lookup(record, accessor):
    """A record accessor, `$level` or `$kubernetes['labels']['x']`."""
    m = re.fullmatch(r"\$(\w+)((?:\['[^']+'\])*)", accessor)
    if not m:
        fail(f"bad record accessor {accessor}")
    value = record.get(m.group(1))
    for key in re.findall(r"\['([^']+)'\]", m.group(2)):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def check_line(line, configs, parsers):
    record = json.loads(line)
    for field in ("timestamp", "level", "target", "fields"):
        if field not in record:
            fail(f"log line without {field}: {line}")
    for path, config in configs.items():
        for f in config["pipeline"].get("filters", []):
            if f["name"] == "grep":
                key, pattern = f["regex"].split(" ", 1)
                if not re.search(pattern, str(record.get(key, ""))):
                    return False  # not tarn's own line (a library's): dropped
            nested = record.get(f.get("nested_under"))
            if f["name"] == "nest" and nested is not None and not isinstance(nested, dict):
                fail(f"{path.name}: nest lifts {f['nested_under']}, not a map in: {line}")
            if f["name"] == "parser":
                parser = parsers[f["parser"]]
                value = record[f["key_name"]]
                fmt = parser["time_format"].replace("%L", "%f")
                try:
                    datetime.datetime.strptime(value, fmt)
                except ValueError as e:
                    fail(f"{path.name}: {value!r} does not parse with {parser['time_format']}: {e}")
        for out in config["pipeline"].get("outputs", []):
            for accessor in re.findall(r"\$\w+(?:\['[^']+'\])*", out.get("labels", "")):
                if accessor.startswith("$kubernetes"):
                    continue  # added by the kubernetes filter on a node
                if lookup(record, accessor) is None:
                    fail(f"{path.name}: label {accessor} is not in tarn's line: {line}")
    return True


def main():
    parsers = check_parsers()
    configs = {p: check_file(p) for p in sorted(HERE.glob("fluent-bit-*.yaml"))}
    if len(configs) < 2:
        fail("expected fluent-bit-loki.yaml and fluent-bit-elasticsearch.yaml")
    lines = 0
    if len(sys.argv) > 1:
        for line in pathlib.Path(sys.argv[1]).read_text().splitlines():
            if line.strip() and check_line(line, configs, parsers):
                lines += 1
        if lines == 0:
            fail(f"{sys.argv[1]}: no log lines of tarn's")
    print(f"check.py: {len(configs)} configurations, {lines} log lines: ok")


if __name__ == "__main__":
    main()
