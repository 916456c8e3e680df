"""Several ingress processes' metrics as one exposition: counters and histograms summed, configuration
gauges and creation times taken once, process metrics from the first process only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from imrelay_ingress.workers import merge_expositions


def exposition(accepted: int, seconds: list[float], memory: float) -> str:
    reg = CollectorRegistry()
    Counter("imrelay_callbacks", "c", ["outcome"], registry=reg).labels(outcome="accepted").inc(accepted)
    Gauge("imrelay_build_info", "b", ["version"], registry=reg).labels(version="1").set(1)
    h = Histogram("imrelay_callback_ack_seconds", "h", buckets=(0.01, 0.1), registry=reg)
    for s in seconds:
        h.observe(s)
    Gauge("process_resident_memory_bytes", "m", registry=reg).set(memory)
    return generate_latest(reg).decode()


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if not s.name.endswith("_created")
    }


def test_samples_are_summed_across_processes() -> None:
    merged = values(
        merge_expositions([exposition(3, [0.005], 100.0), exposition(4, [0.05, 1.0], 200.0)]).decode()
    )
    assert merged[("imrelay_callbacks_total", (("outcome", "accepted"),))] == 7
    assert merged[("imrelay_build_info", (("version", "1"),))] == 1
    assert merged[("imrelay_callback_ack_seconds_bucket", (("le", "0.01"),))] == 1
    assert merged[("imrelay_callback_ack_seconds_bucket", (("le", "0.1"),))] == 2
    assert merged[("imrelay_callback_ack_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("imrelay_callback_ack_seconds_count", ())] == 3
    assert merged[("process_resident_memory_bytes", ())] == 100.0


def test_one_process_is_unchanged() -> None:
    text = exposition(2, [0.2], 5.0)
    assert values(merge_expositions([text]).decode()) == values(text)
