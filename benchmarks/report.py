"""Plain-text tables of scenario results."""

from __future__ import annotations

from typing import Any


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a scenario result (medians, throughput, ratios)."""
    lines = [f"== {result['scenario']} =="]
    for key in ("median_s", "samples_per_s", "encoder_calls", "median_split_s", "engine"):
        if key in result:
            lines.append(f"{key}:")
            lines.extend(f"  {name:<14} {value:>12.4g}" for name, value in result[key].items())
    if "results" in result:
        lines.append(
            f"  {'mode':<8} {'clients':>7} {'images/s':>10} {'p50 s':>8} {'p99 s':>8} {'cpu ms/img':>10}"
        )
        for mode, by_clients in result["results"].items():
            for clients, row in by_clients.items():
                lines.append(
                    f"  {mode:<8} {clients:>7} {row['images_per_s']:>10.2f} "
                    f"{row['p50_latency_s']:>8.3f} {row['p99_latency_s']:>8.3f} "
                    f"{row.get('server_cpu_ms_per_image', float('nan')):>10.2f}"
                )
    for backend, part in result.get("backends", {}).items():
        if len(result["backends"]) > 1:
            lines.append(f"-- backend {backend} --")
            lines.extend(f"  {name:<14} {value:>12.4g}" for name, value in part["engine"].items())
            lines.extend(
                f"  {mode:<8} {clients:>7} {row['images_per_s']:>10.2f} {row['p50_latency_s']:>8.3f} "
                f"{row['p99_latency_s']:>8.3f} {row.get('server_cpu_ms_per_image', float('nan')):>10.2f}"
                for mode, by_clients in part["results"].items()
                for clients, row in by_clients.items()
            )
            lines.extend(f"  {name:<36} {value:.3f}" for name, value in part["ratios"].items())
    if "peak_in_transformers" in result:
        lines.append("peak bytes per rank in transformer parameters (x one unsharded transformer):")
        lines.append(f"  {'run':<24} {'copies':>8} {'old+ref':>8} {'deferred':>9} {'old+ref':>8}")
        for run, row in result["peak_in_transformers"].items():
            lines.append(
                f"  {run:<24} {row['copies_all']:>8.2f} {row['copies_old_ref']:>8.2f} "
                f"{row['deferred_all']:>9.2f} {row['deferred_old_ref']:>8.2f}"
            )
    extras = ("framework_overhead", "achieved_tflops", "mfu", "wall_s")
    lines.extend(f"{key}: {result[key]:.4g}" for key in extras if key in result)
    lines.extend(f"{key}: {value:.3f}" for key, value in result.items() if key.startswith("peak_memory"))
    lines.append("ratios:")
    lines.extend(f"  {name:<36} {value:.3f}" for name, value in result["ratios"].items())
    return "\n".join(lines)
