"""The nearby Grafana dashboard, as code (grafana-foundation-sdk).

    python deploy/grafana/generate.py          # writes deploy/grafana/nearby.json
    python deploy/grafana/generate.py --check  # fails if the committed JSON is stale

Rows: the edge (Envoy), the fan-out, location and history, presence, and the
health of Redis and Postgres. Queries use the metric names the services and
Envoy export and the recording rules of deploy/prometheus/recording.yml; a
test scrapes a running stack and checks every name (tests/test_observe_stack.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).with_name("nearby.json")
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

#: (row title, [(panel title, unit, [(expr, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Edge (Envoy)",
        [
            (
                "Requests/s by response class",
                "reqps",
                [
                    (
                        "sum by (envoy_response_code_class) (rate(envoy_http_downstream_rq_xx"
                        f'{{envoy_http_conn_manager_prefix="edge"}}[{RATE}]))',
                        "{{envoy_response_code_class}}xx",
                    )
                ],
            ),
            ("5xx share", "percentunit", [("nearby:envoy_downstream_5xx:ratio5m", "5xx")]),
            (
                "Open client connections and streams",
                "short",
                [
                    (
                        'sum(envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix="edge"})',
                        "connections",
                    ),
                    (
                        'sum(envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="edge"})',
                        "requests and streams",
                    ),
                ],
            ),
            (
                "Healthy backends",
                "short",
                [
                    (
                        'envoy_cluster_membership_healthy{envoy_cluster_name=~"friend_svc|'
                        'location_svc|presence_svc|fanout_svc"}',
                        "{{envoy_cluster_name}}",
                    )
                ],
            ),
            (
                "Circuit-breaker overflows (5 min)",
                "short",
                [("nearby:envoy_overflow:increase5m", "{{envoy_cluster_name}}")],
            ),
        ],
    ),
    (
        "Fan-out",
        [
            (
                "Open streams",
                "short",
                [("sum by (instance) (nearby_fanout_streams)", "{{instance}}")],
            ),
            (
                "Delivered friend updates/s",
                "ops",
                [
                    ("nearby:fanout_updates_delivered:rate1m", "delivered"),
                    (
                        f"sum by (kind) (rate(nearby_fanout_pushes_total[{RATE}]))",
                        "{{kind}}",
                    ),
                ],
            ),
            (
                "Push latency (publish to write)",
                "s",
                [
                    ("nearby:fanout_push_latency_seconds:p50", "p50"),
                    ("nearby:fanout_push_latency_seconds:p99", "p99"),
                ],
            ),
            (
                "Drops and streams that fell behind",
                "ops",
                [
                    ("nearby:fanout_drops:rate1m", "drops/s"),
                    (
                        f"sum by (why) (rate(nearby_fanout_fell_behind_total[{RATE}]))",
                        "fell behind ({{why}})",
                    ),
                ],
            ),
            (
                "Hub: messages/s and channels",
                "short",
                [
                    (f"sum(rate(nearby_fanout_hub_messages_total[{RATE}]))", "messages/s"),
                    ("sum(nearby_fanout_hub_channels)", "channels"),
                ],
            ),
            (
                "Hub reconnects and resyncs",
                "short",
                [
                    ("nearby:fanout_hub_reconnects:increase10m", "reconnects (10 min)"),
                    ("nearby:fanout_streams_resynced:rate5m", "streams resynced/s"),
                    (f"sum(rate(nearby_fanout_resyncs_total[{RATE}]))", "snapshots resent/s"),
                ],
            ),
            (
                "Reports per batch to location_svc",
                "short",
                [
                    (
                        f"sum(rate(nearby_fanout_reports_total[{RATE}])) / "
                        f"sum(rate(nearby_fanout_report_batches_total[{RATE}]))",
                        "reports/call",
                    ),
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(nearby_fanout_batch_events_bucket[{RATE}])))",
                        "events/message p50",
                    ),
                ],
            ),
        ],
    ),
    (
        "Location and history",
        [
            (
                "Reports/s by disposition",
                "ops",
                [
                    (
                        f"sum by (disposition) (rate(location_reports_total[{RATE}]))",
                        "{{disposition}}",
                    )
                ],
            ),
            (
                "History rows written/s",
                "ops",
                [(f"sum(rate(location_history_rows_written_total[{RATE}]))", "rows/s")],
            ),
            ("History lag", "s", [("nearby:location_history_lag_seconds:max", "lag")]),
            (
                "History buffer",
                "short",
                [
                    ("max(location_history_buffer_entries)", "entries"),
                    ("nearby:location_history_buffer_ratio:max", "fill (ratio)"),
                ],
            ),
            (
                "History dropped, unreplicated, reclaimed",
                "short",
                [
                    ("nearby:location_history_dropped:increase5m", "dropped (5 min)"),
                    (
                        f"sum(increase(location_history_unreplicated_total[{RATE}]))",
                        "unreplicated",
                    ),
                    (f"sum(increase(location_history_reclaimed_total[{RATE}]))", "reclaimed"),
                ],
            ),
        ],
    ),
    (
        "Presence",
        [
            (
                "Offline events/s",
                "ops",
                [(f"sum(rate(presence_offline_events_total[{RATE}]))", "offline")],
            ),
            (
                "Sweep time p99",
                "s",
                [
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(presence_sweep_seconds_bucket[{RATE}])))",
                        "p99",
                    )
                ],
            ),
            (
                "Visibility changes and ghost-flag reloads",
                "short",
                [
                    (
                        f"sum by (visibility) (rate(presence_visibility_changes_total[{RATE}]))",
                        "{{visibility}}",
                    ),
                    (f"sum(rate(presence_hidden_flag_reloads_total[{RATE}]))", "flag reloads"),
                ],
            ),
        ],
    ),
    (
        "Redis and Postgres health",
        [
            (
                "Calls failed by a backing store",
                "ops",
                [
                    ("nearby:backend_errors:rate5m", "{{backend}}"),
                    ("nearby:grpc_unavailable:rate5m", "UNAVAILABLE from {{job}}"),
                ],
            ),
            (
                "Redis retries, redirects, topology refreshes",
                "ops",
                [
                    (f"sum by (reason) (rate(redis_retries_total[{RATE}]))", "retry {{reason}}"),
                    (f"sum by (kind) (rate(redis_redirects_total[{RATE}]))", "redirect {{kind}}"),
                    (f"sum(rate(redis_topology_refreshes_total[{RATE}]))", "refreshes"),
                ],
            ),
            (
                "Inbox publish failures",
                "short",
                [(f"sum(increase(friend_inbox_publish_failures_total[{RATE}]))", "failures")],
            ),
            (
                "RPC latency p99 (unary)",
                "s",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, grpc_service) "
                        f'(rate(grpc_server_handling_seconds_bucket{{grpc_method!="Connect"}}[{RATE}])))',
                        "{{grpc_service}}",
                    )
                ],
            ),
            ("Processes up", "short", [("up", "{{job}} {{instance}}")]),
        ],
    ),
]


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("nearby")
        .uid("nearby-overview")
        .description("Edge, fan-out, location/history, presence and Redis/Postgres health")
        .tags(["nearby", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    for row, panels in ROWS:
        board = board.with_row(dashboard.Row(row))
        for title, unit, queries in panels:
            panel = timeseries.Panel().title(title).unit(unit).datasource(DS).height(8).span(8)
            for i, (expr, legend) in enumerate(queries):
                panel = panel.with_target(
                    prometheus.Dataquery()
                    .expr(expr)
                    .legend_format(legend)
                    .ref_id(chr(ord("A") + i))
                    .datasource(DS)
                )
            board = board.with_panel(panel)
    return board


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if nearby.json is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.name} is stale: run `make dashboard` and commit it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
