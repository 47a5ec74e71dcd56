"""Reading ``/metrics`` in tests with Prometheus' own Python parser, and promtool's lint."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.support.env import need


def parse(text: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Every sample of a scrape: sample name -> label set -> value (label order does not matter)."""
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series (``le`` and the like as keyword arguments), None when absent."""
    return parse(text).get(name, {}).get(frozenset(labels.items()))


def types(text: str) -> dict[str, str]:
    """Family name (counters without ``_total``, as the parser names them) -> type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def promtool_check(text: str) -> str:
    """``promtool check metrics`` on a scrape: its output, asserting it found no problem."""
    need(shutil.which("promtool") is not None, "promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"promtool check metrics: {output}"
    return output
