"""Parses a Prometheus text exposition from stdin with the reference parser (prometheus_client)
and prints every sample as JSON: [{"name", "labels", "value"}], plus the families' types.
Exits non-zero, with the parser's error, when the exposition does not parse."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({"name": family.name, "type": family.type})
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
json.dump({"families": families, "samples": samples}, sys.stdout)
