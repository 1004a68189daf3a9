"""Validates a DataHub MCP file that tarn wrote, with the acryl-datahub package's own classes.

Usage: datahub_check.py FILE

Every proposal's aspect must parse as its aspect class (ASPECT_NAME_MAP) and validate, its
URN must parse as a DataHub URN of its entity type, and `datahub check metadata-file` must
accept the file. Prints one JSON line: the aspects per name and the lineage edges found.
"""

import json
import subprocess
import sys
from pathlib import Path

from datahub.metadata.schema_classes import ASPECT_NAME_MAP
from datahub.utilities.urns.urn import Urn


def main() -> None:
    path = sys.argv[1]
    mcps = json.loads(Path(path).read_text())
    counts: dict[str, int] = {}
    lineage: list[list[str]] = []
    jobs: list[dict] = []
    for i, mcp in enumerate(mcps):
        where = f"proposal {i} ({mcp.get('entityUrn')}, {mcp.get('aspectName')})"
        assert mcp["changeType"] == "UPSERT", where
        urn = Urn.from_string(mcp["entityUrn"])
        assert urn.entity_type == mcp["entityType"], f"{where}: URN of a {urn.entity_type}"
        cls = ASPECT_NAME_MAP[mcp["aspectName"]]
        aspect = cls.from_obj(mcp["aspect"]["json"])
        assert aspect.validate(), f"{where}: does not validate as {cls.__name__}"
        counts[mcp["aspectName"]] = counts.get(mcp["aspectName"], 0) + 1
        if mcp["aspectName"] == "upstreamLineage":
            for up in aspect.upstreams:
                Urn.from_string(up.dataset)
                lineage.append([up.dataset, mcp["entityUrn"], str(up.type)])
        if mcp["aspectName"] == "dataJobInputOutput":
            jobs.append({"job": mcp["entityUrn"], "in": aspect.inputDatasets, "out": aspect.outputDatasets})
    datahub = Path(sys.executable).parent / "datahub"
    check = subprocess.run([str(datahub), "check", "metadata-file", path], capture_output=True, text=True)
    assert check.returncode == 0, f"datahub check metadata-file failed:\n{check.stdout}\n{check.stderr}"
    print(json.dumps({"counts": counts, "lineage": lineage, "jobs": jobs}))


if __name__ == "__main__":
    main()
